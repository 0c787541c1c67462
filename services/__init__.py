"""gRPC stage services: any stage on any machine, clients in any language.

* :mod:`.convert` — records <-> ``facerecon.v1`` protobuf messages (generated code in ``facerecon.v1``);
* :mod:`.kinds` — the gRPC facts of each stage kind and the pipeline (service name, stub, servicer registration);
* :mod:`.server` — stage and pipeline servers: settings, ports, TLS, health, reflection, graceful shutdown;
* :mod:`.servicers` — the four stage servicers and the Pipeline servicer (requests in, stage contract checked);
* :mod:`.interceptors` — the bearer token, and exceptions -> status codes;
* :mod:`.loader` — the stage objects a server builds in the background and lends to one call at a time;
* :mod:`.remote` — the ``remote`` stage plugin: a stage served elsewhere, used like a local one;
* :mod:`.channels` — the remote stages' gRPC channels (targets, retries, TLS, one shared channel per target);
* :mod:`.commands` — ``facerecon serve``;
* :mod:`.codegen` — regenerates ``facerecon/v1`` from ``protos/facerecon/v1/*.proto``.

The protocol and its status codes are documented in ``protos/facerecon/v1/*.proto`` and docs/services.md.
"""

MAX_IMAGE_PIXELS = 25_000_000
"""A server's default limit on decoded pixels per request (the CLI's is 80 MP; 6000x4000 photos pass). Kept
here, without grpc's import, for the ``serve`` command's flags."""
