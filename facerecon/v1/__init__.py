"""Generated gRPC code of the proto package ``facerecon.v1`` (source: protos/facerecon/v1/*.proto).

Regenerate with ``python -m facerecon.services.codegen``; do not edit. Import the modules directly, e.g.
``from facerecon.v1 import records_pb2, stages_pb2, stages_pb2_grpc``.
"""
