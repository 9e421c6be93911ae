"""The Index contract as a test suite other implementations inherit.

Like ``zarr.testing.store.StoreTests``: an index implementation (LmdbIndex, PgIndex in
``tests/test_pg_index.py``, or a third party's) proves the contract by subclassing
:class:`IndexTests` and overriding :meth:`~IndexTests.index_factory`::

    from pacscore.testing.index import IndexTests

    class TestMyIndex(IndexTests):
        def index_factory(self, tmp_path):
            return MyIndex(tmp_path / "index")

The class name must start with ``Test`` for pytest to collect it.  This module needs
pytest (the ``test`` extra: ``pip install pacscore[test]``); ``import pacscore`` never
imports it.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ..errors import NotFoundError
from ..index import LEVELS, Index, InstanceRecord, StoreKind
from ._index_base import (
    CT_CLASS,
    EXPLICIT,
    HTJ2K,
    MR_CLASS,
    IndexFixtures,
    header_of,
    make,
    put,
    uids,
)
from ._index_queries import IndexQueryTests

__all__ = ["CT_CLASS", "EXPLICIT", "HTJ2K", "MR_CLASS", "IndexFixtures", "IndexTests",
           "header_of", "make", "put", "uids"]


class IndexTests(IndexQueryTests):
    """Tests every Index must pass.  Subclasses override :meth:`index_factory` (a fresh,
    empty index under ``tmp_path``; it is closed after each test) or the ``index``
    fixture."""

    # -- empty --------------------------------------------------------------------------
    def test_empty_index(self, index: Index) -> None:
        assert index.get("1.2.3") is None
        assert list(index.records()) == []
        assert index.pending() == []
        assert index.location_owner("0" * 32) is None
        stats = index.stats()
        assert (stats["instances"], stats["bytes_in"], stats["bytes_stored"]) == (0, 0, 0)
        assert stats["compressed_instances"] == 0
        assert not stats["transfer_syntaxes"]
        for level in LEVELS:
            assert index.find(level, {}) == []
            assert index.instances(level, "1.2.3") == []
        with pytest.raises(NotFoundError):
            index.header("1.2.3")

    def test_unknown_level_is_refused(self, index: Index) -> None:
        with pytest.raises(ValueError, match="level"):
            index.find("equipment", {})
        with pytest.raises(ValueError, match="level"):
            index.instances("equipment", "1")

    # -- put / get / header -------------------------------------------------------------
    def test_put_then_get_round_trips_the_record(self, index: Index) -> None:
        frames, blob = make("1.5.1"), make("1.5.2", kind=StoreKind.BLOB)
        outcomes = index.put([(frames, header_of(frames)), (blob, b"")])
        assert [(o.sop_instance_uid, o.status) for o in outcomes] == [
            ("1.5.1", "stored"), ("1.5.2", "stored")]
        assert index.get("1.5.1") == frames
        assert index.get("1.5.2") == blob
        assert index.header("1.5.1") == header_of(frames)
        with pytest.raises(NotFoundError):
            index.header("1.5.2")  # blobs keep no separate header
        assert sorted(r.sop_instance_uid for r in index.records()) == ["1.5.1", "1.5.2"]
        assert index.location_owner(frames.location) == "1.5.1"
        assert index.location_owner(blob.location) == "1.5.2"

    def test_get_many_answers_the_stored_ones_by_uid(self, index: Index) -> None:
        a, b = make("1.5.1"), make("1.5.2", kind=StoreKind.BLOB)
        index.put([(a, header_of(a)), (b, b"")])
        assert index.get_many([]) == {}
        assert index.get_many(["1.5.2", "1.5.9", "1.5.1", "1.5.2", ""]) == {
            "1.5.1": a, "1.5.2": b}

    def test_headers_answer_the_stored_ones_by_uid(self, index: Index) -> None:
        a, b, c = make("1.5.1"), make("1.5.2", kind=StoreKind.BLOB), make("1.5.3")
        index.put([(a, header_of(a)), (b, b""), (c, header_of(c))])
        assert index.headers([]) == {}
        assert index.headers(["1.5.3", "1.5.2", "1.5.9", "1.5.1", "1.5.3", ""]) == {
            "1.5.1": header_of(a), "1.5.3": header_of(c)}  # a blob keeps none
        assert index.headers(["1.5.1"])["1.5.1"] == index.header("1.5.1")

    def test_put_returns_outcomes_in_input_order(self, index: Index) -> None:
        recs = [make(f"1.6.{i}") for i in (5, 1, 3)]
        put(index, recs[1])
        outcomes = index.put([(r, header_of(r)) for r in recs])
        assert [o.sop_instance_uid for o in outcomes] == ["1.6.5", "1.6.1", "1.6.3"]
        assert [o.status for o in outcomes] == ["stored", "duplicate", "stored"]

    def test_duplicate_keeps_the_first_record(self, index: Index) -> None:
        first = make("1.7.1", content="same")
        second = make("1.7.1", content="same")  # other location, same content
        assert first.location != second.location and first.sha256 == second.sha256
        put(index, first)
        before = index.stats()
        [outcome] = index.put([(second, b"other header")])
        assert outcome.status == "duplicate"
        assert outcome.existing == first
        assert index.get("1.7.1") == first
        assert index.header("1.7.1") == header_of(first)
        assert index.location_owner(second.location) is None
        assert index.stats() == before

    def test_conflict_keeps_the_first_record(self, index: Index) -> None:
        first, other = make("1.7.2", content="a"), make("1.7.2", content="b")
        put(index, first)
        before = index.stats()
        [outcome] = index.put([(other, header_of(other))])
        assert outcome.status == "conflict"
        assert outcome.existing == first
        assert index.get("1.7.2") == first
        assert index.location_owner(other.location) is None
        assert index.stats() == before
        assert len(list(index.records())) == 1

    def test_duplicate_and_conflict_within_one_batch(self, index: Index) -> None:
        a, a_again, a_other = (make("1.7.3", content="x"), make("1.7.3", content="x"),
                               make("1.7.3", content="y"))
        outcomes = index.put([(r, header_of(r)) for r in (a, a_again, a_other)])
        assert [o.status for o in outcomes] == ["stored", "duplicate", "conflict"]
        assert outcomes[1].existing == a and outcomes[2].existing == a
        assert index.stats()["instances"] == 1

    # -- hierarchy ------------------------------------------------------------------------
    def test_series_under_another_study_is_refused(self, index: Index) -> None:
        put(index, make("1.8.1", study="1.2.1", series="1.2.1.1"))
        before = index.stats()
        intruder = make("1.8.2", study="1.2.2", series="1.2.1.1")
        [outcome] = index.put([(intruder, header_of(intruder))])
        assert outcome.status == "refused"
        assert "1.2.1.1" in outcome.reason
        assert outcome.existing is None
        assert index.get("1.8.2") is None
        assert index.location_owner(intruder.location) is None
        assert index.stats() == before
        assert uids(index.find("study", {}), "StudyInstanceUID") == ["1.2.1"]
        assert index.instances("series", "1.2.1.1") == ["1.8.1"]

    def test_study_under_another_patient_is_refused(self, index: Index) -> None:
        put(index, make("1.8.3", study="1.2.5", series="1.2.5.1", patient="P1"))
        intruder = make("1.8.4", study="1.2.5", series="1.2.5.2", patient="P9")
        [outcome] = index.put([(intruder, header_of(intruder))])
        assert outcome.status == "refused"
        assert index.get("1.8.4") is None
        assert uids(index.find("patient", {}), "PatientID") == ["P1"]
        assert index.find("series", {"SeriesInstanceUID": "1.2.5.2"}) == []

    def test_refusal_within_one_batch(self, index: Index) -> None:
        ok, bad, ok2 = (make("1.8.5", study="1.2.6", series="1.2.6.1"),
                        make("1.8.6", study="1.2.7", series="1.2.6.1"),
                        make("1.8.7", study="1.2.6", series="1.2.6.1"))
        outcomes = index.put([(r, header_of(r)) for r in (ok, bad, ok2)])
        assert [o.status for o in outcomes] == ["stored", "refused", "stored"]
        assert sorted(index.instances("study", "1.2.6")) == ["1.8.5", "1.8.7"]
        assert index.instances("study", "1.2.7") == []

    def test_instances_at_each_level(self, populated: Index) -> None:
        assert sorted(populated.instances("patient", "P1")) == [f"1.9.{i}" for i in range(1, 6)]
        assert sorted(populated.instances("patient", "P2")) == ["1.9.6", "1.9.7", "1.9.8",
                                                                "1.9.9"]
        assert sorted(populated.instances("study", "1.2.1")) == ["1.9.1", "1.9.2", "1.9.3"]
        assert sorted(populated.instances("series", "1.2.3.1")) == ["1.9.6", "1.9.7", "1.9.8"]
        assert populated.instances("instance", "1.9.4") == ["1.9.4"]
        assert populated.instances("instance", "1.9.99") == []
        assert populated.instances("patient", "P3") == []
        assert populated.instances("study", "1.2.1.1") == []  # a series UID is no study

    def test_missing_patient_id_is_a_patient_too(self, index: Index) -> None:
        put(index, make("1.8.8", study="1.2.8", series="1.2.8.1", patient=None))
        assert index.instances("study", "1.2.8") == ["1.8.8"]
        assert len(index.find("patient", {})) == 1
        assert index.find("study", {})[0]["NumberOfStudyRelatedInstances"] == 1

    def test_patients_without_a_patient_id_are_never_merged(self, index: Index) -> None:
        """Audit 14.11: seven patients without a Patient ID became one patient under the
        first one's name, so a patient-level query by another's name found nothing."""
        recs = [make(f"1.8.{20 + i}", study=f"1.2.{20 + i}", series=f"1.2.{20 + i}.1",
                     patient=None, name=f"PERSON{i}^X", PatientBirthDate=f"1970010{i}")
                for i in range(7)]
        recs.append(make("1.8.30", study="1.2.20", series="1.2.20.1", patient=None,
                         name="PERSON0^X"))  # a second instance of the first study
        assert put(index, *recs) == ["stored"] * 8
        patients = index.find("patient", {})
        assert len(patients) == 7
        assert sorted(p["PatientName"] for p in patients) == [f"PERSON{i}^X" for i in range(7)]
        assert {p["PatientID"] for p in patients} == {None}  # no key is shown as an ID
        assert sum(p["NumberOfPatientRelatedInstances"] for p in patients) == 8
        assert all(p["NumberOfPatientRelatedStudies"] == 1 for p in patients)
        for i in range(7):
            [one] = index.find("patient", {"PatientName": f"person{i}^x"})
            assert one["PatientBirthDate"] == f"1970010{i}"
            [study] = index.find("study", {"PatientName": f"person{i}^x"})
            assert study["StudyInstanceUID"] == f"1.2.{20 + i}"
        assert index.find("patient", {"PatientBirthDate": "19700103"})[0]["PatientName"] \
            == "PERSON3^X"
        assert index.instances("patient", "") == []  # no patient has an empty ID
        assert index.changed("patient", "") is None
        index.delete(["1.8.23"])
        assert index.find("patient", {"PatientName": "PERSON3^X"}) == []
        assert len(index.find("patient", {})) == 6
        # an instance of a study without a Patient ID that names one contradicts it
        [outcome] = index.put([(make("1.8.31", study="1.2.21", series="1.2.21.2",
                                     patient="P7"), b"")])
        assert outcome.status == "refused" and "without a Patient ID" in outcome.reason

    def test_patient_level_matches_what_study_level_matches(self, index: Index) -> None:
        """One Patient ID whose studies carry other names or birth dates: a patient-level
        query matches the values of any of its studies, as a study-level one does."""
        put(index, make("1.8.40", study="1.2.40", series="1.2.40.1", patient="P5",
                        name="Maiden^Anna", PatientBirthDate="19800101"),
            make("1.8.41", study="1.2.41", series="1.2.41.1", patient="P5",
                 name="Married^Anna", PatientBirthDate="19800101"),
            make("1.8.42", study="1.2.42", series="1.2.42.1", patient="P5",
                 name="Married^Anna", PatientBirthDate="19800101"))
        for name in ("maiden^anna", "married^anna", "MAR*", "*anna"):
            studies = index.find("study", {"PatientName": name})
            [patient] = index.find("patient", {"PatientName": name})
            assert patient["PatientID"] == "P5"
            assert patient["NumberOfPatientRelatedStudies"] == 3
            assert patient["PatientName"] in {s["PatientName"] for s in studies}
        [patient] = index.find("patient", {"PatientID": "P5", "PatientName": "maiden*"})
        assert patient["PatientName"] == "Maiden^Anna"
        assert index.find("patient", {"PatientName": "Maiden^Anna",
                                      "PatientBirthDate": "19800102"}) == []
        index.delete(["1.8.40"])  # the study with the maiden name goes: so does the name
        assert index.find("patient", {"PatientName": "maiden*"}) == []
        assert index.find("study", {"PatientName": "maiden*"}) == []
        assert len(index.find("patient", {"PatientName": "married*"})) == 1
        index.delete(["1.8.41"])  # one study of the married name left: still found
        [patient] = index.find("patient", {"PatientName": "married*"})
        assert patient["NumberOfPatientRelatedStudies"] == 1

    def test_issuer_of_patient_id_separates_patients(self, index: Index) -> None:
        """Two authorities may issue the same Patient ID to two people (PS3.3 Table
        C.7-1; IHE PIX/PIR): (Patient ID, issuer) is the patient."""
        assert put(index,
                   make("1.8.50", study="1.2.50", series="1.2.50.1", patient="77",
                        name="North^Ann", IssuerOfPatientID="HOSP_A"),
                   make("1.8.51", study="1.2.51", series="1.2.51.1", patient="77",
                        name="South^Bob", IssuerOfPatientID="HOSP_B"),
                   # no issuer in this instance: it joins its study's patient
                   make("1.8.52", study="1.2.50", series="1.2.50.1", patient="77",
                        name="North^Ann")) == ["stored"] * 3
        patients = index.find("patient", {"PatientID": "77"})
        assert sorted((p["IssuerOfPatientID"], p["PatientName"]) for p in patients) == [
            ("HOSP_A", "North^Ann"), ("HOSP_B", "South^Bob")]
        [a] = index.find("patient", {"PatientID": "77", "IssuerOfPatientID": "HOSP_A"})
        assert a["NumberOfPatientRelatedInstances"] == 2
        assert sorted(index.instances("patient", "77")) == ["1.8.50", "1.8.51", "1.8.52"]
        assert index.changed("patient", "77") is not None
        intruder = make("1.8.53", study="1.2.50", series="1.2.50.2", patient="77",
                        IssuerOfPatientID="HOSP_B")
        [outcome] = index.put([(intruder, header_of(intruder))])
        assert outcome.status == "refused" and "HOSP_A" in outcome.reason
        index.delete(["1.8.51"])
        assert [p["IssuerOfPatientID"] for p in index.find("patient", {})] == ["HOSP_A"]

    def test_a_record_the_index_cannot_take_fails_alone(self, index: Index) -> None:
        """Audit 19.6: a 600-byte Patient ID exceeded LMDB's key limit and failed every
        other record of its group commit."""
        good = [make(f"1.8.6{i}", study="1.2.60", series="1.2.60.1", patient="P60")
                for i in range(3)]
        long_id = make("1.8.69", study="1.2.61", series="1.2.61.1", patient="L" * 600)
        control = make("1.8.68", study="1.2.62", series="1.2.62.1", patient="A\x1fB")
        long_issuer = make("1.8.67", study="1.2.63", series="1.2.63.1", patient="P63",
                           IssuerOfPatientID="I" * 65)
        batch = [good[0], long_id, good[1], control, long_issuer, good[2]]
        outcomes = index.put([(r, header_of(r)) for r in batch])
        assert [o.status for o in outcomes] == ["stored", "invalid", "stored", "invalid",
                                                "invalid", "stored"]
        assert "Patient ID is 600 characters long" in outcomes[1].reason
        assert "64" in outcomes[1].reason and "1.8.69" in outcomes[1].reason
        assert "control characters" in outcomes[3].reason
        assert "Issuer of Patient ID is 65 characters" in outcomes[4].reason
        assert index.stats()["instances"] == 3
        assert [index.get(r.sop_instance_uid) for r in batch] == [
            good[0], None, good[1], None, None, good[2]]
        assert index.location_owner(long_id.location) is None
        assert len(index.find("patient", {})) == 1
        # a record that fails only inside the transaction (a value JSON cannot hold):
        # the transaction is retried without it
        odd = make("1.8.66", study="1.2.64", series="1.2.64.1", patient="P64",
                   Raw=b"\x00\x01")
        more = [make(f"1.8.7{i}", study="1.2.60", series="1.2.60.1", patient="P60")
                for i in range(2)]
        outcomes = index.put([(r, header_of(r)) for r in (more[0], odd, more[1])])
        assert [o.status for o in outcomes] == ["stored", "invalid", "stored"]
        assert "1.8.66" in outcomes[1].reason and "TypeError" in outcomes[1].reason
        assert index.get("1.8.66") is None and index.find("study", {"StudyInstanceUID":
                                                                    "1.2.64"}) == []
        assert index.stats()["instances"] == 5

    def test_long_values_are_matched_exactly_and_by_prefix(self, index: Index) -> None:
        """Values longer than a key can hold are indexed by prefix and hash."""
        base = "X" * 300
        put(index, make("1.8.70", study="1.2.70", series="1.2.70.1", accession=base + "1",
                        name=base + "^A"),
            make("1.8.71", study="1.2.71", series="1.2.71.1", accession=base + "2",
                 name=base + "^B"),
            make("1.8.72", study="1.2.72", series="1.2.72.1", accession="A" * 5000))

        def studies(**query: str) -> list[str]:
            return sorted(uids(index.find("study", query), "StudyInstanceUID"))

        assert studies(AccessionNumber=base + "1") == ["1.2.70"]
        assert studies(AccessionNumber=base + "2") == ["1.2.71"]
        assert studies(AccessionNumber=base) == []
        assert studies(AccessionNumber=base + "*") == ["1.2.70", "1.2.71"]
        assert studies(AccessionNumber=base + "?") == ["1.2.70", "1.2.71"]
        assert studies(AccessionNumber="*2") == ["1.2.71"]
        assert studies(AccessionNumber="A" * 5000) == ["1.2.72"]
        assert studies(AccessionNumber="A" * 4999 + "*") == ["1.2.72"]
        assert studies(PatientName=base.lower() + "^b") == ["1.2.71"]
        [patient] = index.find("patient", {"PatientName": base + "^B"})
        assert patient["NumberOfPatientRelatedStudies"] == 3
        index.delete(["1.8.70", "1.8.71", "1.8.72"])
        assert studies(AccessionNumber=base + "*") == []

    # -- delete ------------------------------------------------------------------------------
    def test_delete_instance_updates_counts(self, populated: Index) -> None:
        gone = populated.get("1.9.6")
        assert gone is not None
        removed = populated.delete(["1.9.6"])
        assert removed == [gone]
        assert populated.get("1.9.6") is None
        assert populated.location_owner(gone.location) is None
        assert gone.location in populated.pending()
        with pytest.raises(NotFoundError):
            populated.header("1.9.6")
        [series] = populated.find("series", {"SeriesInstanceUID": "1.2.3.1"})
        assert series["NumberOfSeriesRelatedInstances"] == 2
        [study] = populated.find("study", {"StudyInstanceUID": "1.2.3"})
        assert study["NumberOfStudyRelatedInstances"] == 3
        assert study["NumberOfStudyRelatedSeries"] == 2
        [patient] = populated.find("patient", {"PatientID": "P2"})
        assert patient["NumberOfPatientRelatedInstances"] == 3
        assert patient["NumberOfPatientRelatedStudies"] == 1
        assert populated.stats()["instances"] == 8
        assert populated.find("instance", {"SOPInstanceUID": "1.9.6"}) == []

    def test_delete_last_instance_removes_empty_series(self, populated: Index) -> None:
        populated.delete(["1.9.9"])
        assert populated.find("series", {"SeriesInstanceUID": "1.2.3.2"}) == []
        assert populated.instances("series", "1.2.3.2") == []
        [study] = populated.find("study", {"StudyInstanceUID": "1.2.3"})
        assert study["NumberOfStudyRelatedSeries"] == 1
        assert study["NumberOfStudyRelatedInstances"] == 3
        assert study["ModalitiesInStudy"] == "CT"
        assert populated.find("series", {"Modality": "MR", "StudyInstanceUID": "1.2.3"}) == []

    def test_delete_series(self, populated: Index) -> None:
        removed = populated.delete(populated.instances("series", "1.2.1.1"))
        assert sorted(r.sop_instance_uid for r in removed) == ["1.9.1", "1.9.2"]
        assert populated.find("series", {"SeriesInstanceUID": "1.2.1.1"}) == []
        [study] = populated.find("study", {"StudyInstanceUID": "1.2.1"})
        assert study["NumberOfStudyRelatedSeries"] == 1
        assert study["NumberOfStudyRelatedInstances"] == 1
        assert study["ModalitiesInStudy"] == "PR"
        [patient] = populated.find("patient", {"PatientID": "P1"})
        assert patient["NumberOfPatientRelatedStudies"] == 2
        assert patient["NumberOfPatientRelatedInstances"] == 3

    def test_delete_study_removes_it_but_keeps_the_patient(self, populated: Index) -> None:
        populated.delete(populated.instances("study", "1.2.1"))
        assert populated.find("study", {"StudyInstanceUID": "1.2.1"}) == []
        assert populated.find("series", {"StudyInstanceUID": "1.2.1"}) == []
        assert populated.find("instance", {"StudyInstanceUID": "1.2.1"}) == []
        assert populated.find("study", {"AccessionNumber": "A.100"}) == []
        [patient] = populated.find("patient", {"PatientID": "P1"})
        assert patient["NumberOfPatientRelatedStudies"] == 1
        assert patient["NumberOfPatientRelatedInstances"] == 2
        assert sorted(populated.instances("patient", "P1")) == ["1.9.4", "1.9.5"]

    def test_delete_every_study_of_a_patient_removes_the_patient(self, populated: Index
                                                                 ) -> None:
        populated.delete(populated.instances("patient", "P2"))
        assert uids(populated.find("patient", {}), "PatientID") == ["P1"]
        assert populated.find("patient", {"PatientName": "SMITH^JOHN"}) == []
        assert populated.find("study", {"PatientID": "P2"}) == []
        assert populated.instances("patient", "P2") == []
        # The same UIDs can come back afterwards, under another patient even.
        assert put(populated, make("1.9.6", study="1.2.3", series="1.2.3.1",
                                   patient="P3")) == ["stored"]
        [study] = populated.find("study", {"StudyInstanceUID": "1.2.3"})
        assert study["PatientID"] == "P3"

    def test_delete_everything(self, populated: Index) -> None:
        everything = [r.sop_instance_uid for r in populated.records()]
        assert len(populated.delete(everything)) == 9
        assert list(populated.records()) == []
        for level in LEVELS:
            assert populated.find(level, {}) == []
        stats = populated.stats()
        assert (stats["instances"], stats["bytes_in"], stats["bytes_stored"]) == (0, 0, 0)
        assert stats["compressed_instances"] == 0
        assert not stats["transfer_syntaxes"]

    def test_delete_unknown_and_repeated_uids(self, populated: Index) -> None:
        assert populated.delete(["9.9.9"]) == []
        assert populated.delete([]) == []
        removed = populated.delete(["1.9.1", "1.9.1", "9.9.9"])
        assert [r.sop_instance_uid for r in removed] == ["1.9.1"]
        assert populated.stats()["instances"] == 8

    # -- pending marks ---------------------------------------------------------------------
    def test_pending_marks(self, index: Index) -> None:
        a, b, c = "a" * 32, "b" * 32, "c" * 32
        index.mark_pending([a, b])
        index.mark_pending([])
        assert sorted(index.pending()) == [a, b]
        index.mark_pending([b, c])  # marking twice is harmless
        assert sorted(index.pending()) == [a, b, c]
        index.clear_pending([a, "d" * 32])  # clearing an unmarked one too
        index.clear_pending([])
        assert sorted(index.pending()) == [b, c]
        index.clear_pending([b, c])
        assert index.pending() == []

    def test_put_clears_pending_of_stored_records_only(self, index: Index) -> None:
        first, dup, conflict = (make("1.4.1", content="x"), make("1.4.1", content="x"),
                                make("1.4.1", content="y"))
        refused = make("1.4.2", study="1.2.99", series=first.series_uid)
        locs = [first.location, dup.location, conflict.location, refused.location]
        index.mark_pending(locs)
        statuses = put(index, first, dup, conflict, refused)
        assert statuses == ["stored", "duplicate", "conflict", "refused"]
        assert sorted(index.pending()) == sorted(locs[1:])

    def test_delete_marks_locations_pending(self, populated: Index) -> None:
        recs = [populated.get(u) for u in ("1.9.1", "1.9.3")]
        populated.delete(["1.9.1", "1.9.3"])
        assert sorted(populated.pending()) == sorted(r.location for r in recs if r)


    # -- totals ---------------------------------------------------------------------------------
    def test_stats_are_the_sum_of_the_parts(self, index: Index) -> None:  # noqa: C901
        rng = random.Random(1234)
        live: dict[str, InstanceRecord] = {}
        for step in range(160):
            if live and rng.random() < 0.3:
                victims = rng.sample(sorted(live), min(len(live), rng.randint(1, 4)))
                removed = index.delete(victims)
                assert sorted(r.sop_instance_uid for r in removed) == sorted(victims)
                for v in victims:
                    del live[v]
                continue
            batch = []
            for _ in range(rng.randint(1, 4)):
                p, st, se = rng.randrange(4), rng.randrange(3), rng.randrange(3)
                sop = f"1.1.{rng.randrange(400)}"
                batch.append(make(
                    sop, patient=f"P{p}", study=f"2.{p}.{st}", series=f"2.{p}.{st}.{se}",
                    modality=("CT", "MR", "SR")[se], content=str(step),
                    kind=StoreKind.BLOB if se == 2 else StoreKind.FRAMES,
                    bytes_in=rng.randrange(10**6), bytes_stored=rng.randrange(10**6)))
            outcomes = index.put([(r, header_of(r)) for r in batch])
            for r, o in zip(batch, outcomes, strict=True):
                assert o.status in ("stored", "duplicate", "conflict")
                if o.status == "stored":
                    live[r.sop_instance_uid] = r
                else:
                    assert r.sop_instance_uid in live or any(
                        b.sop_instance_uid == r.sop_instance_uid for b in batch)
        records = list(index.records())
        assert {r.sop_instance_uid: r for r in records} == live
        stats = index.stats()
        assert stats["instances"] == len(live)
        assert stats["bytes_in"] == sum(r.bytes_in for r in live.values())
        assert stats["bytes_stored"] == sum(r.bytes_stored for r in live.values())
        assert stats["compressed_instances"] == sum(r.compressed for r in live.values())
        assert stats["transfer_syntaxes"] == dict(Counter(r.stored_syntax
                                                          for r in live.values()))
        patients = index.find("patient", {})
        studies = index.find("study", {})
        series = index.find("series", {})
        assert sum(p["NumberOfPatientRelatedInstances"] for p in patients) == len(live)
        assert sum(s["NumberOfStudyRelatedInstances"] for s in studies) == len(live)
        assert sum(s["NumberOfSeriesRelatedInstances"] for s in series) == len(live)
        assert sorted(uids(patients, "PatientID")) == sorted(
            {r.attributes["PatientID"] for r in live.values()})
        assert sorted(uids(studies, "StudyInstanceUID")) == sorted(
            {r.study_uid for r in live.values()})
        assert sorted(uids(series, "SeriesInstanceUID")) == sorted(
            {r.series_uid for r in live.values()})
        for pat in patients:
            mine = [s for s in studies if s["PatientID"] == pat["PatientID"]]
            assert pat["NumberOfPatientRelatedStudies"] == len(mine)
            assert pat["NumberOfPatientRelatedInstances"] == sum(
                s["NumberOfStudyRelatedInstances"] for s in mine)
        for s in studies:
            mine = [e for e in series if e["StudyInstanceUID"] == s["StudyInstanceUID"]]
            assert s["NumberOfStudyRelatedSeries"] == len(mine)
            assert s["NumberOfStudyRelatedInstances"] == sum(
                e["NumberOfSeriesRelatedInstances"] for e in mine)
            assert s["ModalitiesInStudy"] == "\\".join(sorted({e["Modality"] for e in mine}))
        for e in series:
            assert e["NumberOfSeriesRelatedInstances"] == len(
                index.instances("series", e["SeriesInstanceUID"]))
        for r in live.values():
            assert index.location_owner(r.location) == r.sop_instance_uid
