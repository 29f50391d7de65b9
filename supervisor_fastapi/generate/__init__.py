"""The generator's pure stages: a ``Spec`` in, text out (supervisord conf, systemd unit,
Kubernetes manifests, nginx and Caddy sites, the starter spec).

Runs in the operator's ``supervisor-fastapi`` process only (`render`, `up`, `check`), never
beside the workers. The renderers read and write no file: the CLI writes what they return
(STYLE.md rule 1); ``starter.write_starter`` (`init`) is the one writer here.
May import the standard library, ``spec``, ``layout``, ``contracts``, ``errors``,
``uvicorn_settings`` and, for ``starter``, the TOML reader and writer; ``ini`` does every bit
of supervisord quoting.
Nothing is imported here.
"""
