"""The share domain: everything about shares, and nothing about HTTP or the command line.

``service`` (ShareService: create, sync, delete, reads; every write goes through ``commit``),
``state`` (the fold of snapshot and journal, and the merge rules), ``storage`` (every store key),
``items`` and ``inputs`` (validation), ``public`` (what anyone with the link sees), ``events``
(the sink the live hub implements), ``ops``, ``owner`` and ``idempotency`` (the durable
protocol), ``sweep`` and ``maintenance`` (the store tools). Only this package touches the store.
"""
