"""The doors of the archive, one package per protocol: :mod:`.dimse` (DIMSE:
storage, query/retrieve, storage commitment), :mod:`.dicomweb` (DICOMweb: QIDO-RS,
WADO-RS/-URI, STOW-RS), :mod:`.grpc` (pacscore's gRPC API), :mod:`.auth` (tokens, the
AE allow-list, the audit trail, access checks shared by the doors); :mod:`.serve`
runs them together."""
