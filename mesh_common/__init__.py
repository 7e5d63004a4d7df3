"""What every layer of the mesh may share: the error tree, the clock and size units.

It imports nothing of the mesh's own, so ``placement``, ``puller`` and ``adapters`` can use it
without depending on the serving core (``mesh``).
"""
