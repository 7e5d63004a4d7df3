"""The descriptor pool that holds the mesh's generated protobuf types.

The generated modules register here instead of protobuf's default pool, because
stock clients that share a process with the mesh (``tritonclient``, MLServer)
register their own ``inference.*`` types in the default pool and two files that
define one symbol cannot live in one pool.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
