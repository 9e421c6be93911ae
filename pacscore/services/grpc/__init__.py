"""gRPC front end; the service definition is ``pacscore.proto`` (also at native/)."""
