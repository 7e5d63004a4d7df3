"""Generated protobuf and gRPC code for the mesh's wire contracts.

Regenerate with ``python proto/regenerate.py``; never edit the ``*_pb2*`` files.
"""
