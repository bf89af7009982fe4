"""A durable client for the cloudsession sync protocol (see docs/protocol.md): changes are
persisted as operations in a SQLite outbox before they are sent, and delivered at least once
over REST or Cap'n Web RPC until the server acknowledges them."""
