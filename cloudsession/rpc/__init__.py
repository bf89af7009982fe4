"""Cap'n Web RPC (the protocol of the npm ``capnweb`` package), server side, for aiohttp.

``codec`` turns wire expressions into Python values and back, ``session`` runs one RPC session
(export/import tables, pipelining, releases), ``transport`` serves sessions over HTTP batch and
WebSocket. None of them knows about shares: ``cloudsession/web/rpc.py`` is the target that serves
the share service at ``/rpc/share``.
"""
