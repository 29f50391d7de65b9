"""The contracts between our processes: what one writes and another reads, in one place.

- ``files``: files between processes (the bounded, no-follow readers and the atomic writer,
  the workers' state and metrics files, the releases' record, /proc's pid and RSS).
- ``settings``: the controller's and the listener's settings as the conf carries them
  (``Policy``, ``ControlConfig``, ``ListenerConfig``).
- ``rpc``: what passes over supervisord's XML-RPC (process info and the controller's state
  as TypedDicts, the controller's calls, remote alerts, log tails, printable app output).
- ``sizes``: byte sizes as people read them.

The operator's CLI and the code inside supervisord both import these, and neither imports
the other. Each process imports only the submodules it needs (the web worker only
``files``), so this package re-exports nothing: a re-export here would load every submodule
into every process that needs any one of them.
"""
