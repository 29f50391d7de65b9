"""The operator's side: the ``supervisor-fastapi`` click commands (cli.main) and what they drive.

Nothing is imported here: the supervisorctl plugin imports cli.ops inside the OS supervisorctl's
Python, which has supervisor and this package but not click (or uvicorn).
"""
