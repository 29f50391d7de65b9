"""supervisord's event-listener wire format, written by tests (and the benchmark) the way supervisord writes it."""


def encode_event(eventname: str, payload: str, serial: int = 1, pool: str = "listener") -> str:
    """One event as supervisord writes it (``len`` counts characters, supervisor #1243)."""
    return (f"ver:3.0 server:supervisor serial:{serial} pool:{pool} poolserial:{serial} "
            f"eventname:{eventname} len:{len(payload)}\n{payload}")


def process_state_payload(name: str, group: str, from_state: str, **extra: str) -> str:
    words = [f"processname:{name}", f"groupname:{group}", f"from_state:{from_state}"]
    words += [f"{k}:{v}" for k, v in extra.items()]
    return " ".join(words)
