"""gRPC stage services: any stage on any machine, clients in any language.

* :mod:`.convert` — records <-> ``facerecon.v1`` protobuf messages (generated code in ``facerecon.v1``);
* :mod:`.server` — stage and pipeline servers (health, reflection, TLS, tokens, status codes);
* :mod:`.remote` — the ``remote`` stage plugin: a stage served elsewhere, used like a local one;
* :mod:`.commands` — ``facerecon serve``;
* :mod:`.codegen` — regenerates ``facerecon/v1`` from ``protos/facerecon/v1/*.proto``.

The protocol and its status codes are documented in ``protos/facerecon/v1/*.proto`` and docs/services.md.
"""
