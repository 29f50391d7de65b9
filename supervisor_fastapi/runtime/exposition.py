"""The Prometheus text exposition format (version 0.0.4), as a pure function of data.

``render(families) -> str``: each family is a name, a type, a help line and its samples;
label values and help text are escaped here and nowhere else. Nothing reads a clock or a
file; the exporter (runtime/metrics.py) gathers the numbers and the unit tests feed data.

Standard library only: the exporter runs under supervisord's user with no dependency but
supervisor.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

Labels = Tuple[Tuple[str, str], ...]

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
KINDS = ("counter", "gauge", "histogram", "untyped")
# Prometheus's default buckets: request latencies from 5 ms to 10 s.
DEFAULT_BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    suffix: str  # appended to the family name: "" or "_bucket", "_sum", "_count"
    labels: Labels
    value: float


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: List[Sample] = field(default_factory=list)

    def add(self, value: float, labels: Optional[Mapping[str, str]] = None, suffix: str = "") -> None:
        self.samples.append(Sample(suffix, tuple((labels or {}).items()), float(value)))

    def add_histogram(self, labels: Mapping[str, str], bounds: Sequence[float], counts: Sequence[int],
                      total: float) -> None:
        """One histogram series from per-bucket counts (not cumulative; ``counts[-1]`` is above the
        last bound), as the _bucket (cumulative, with +Inf), _sum and _count samples."""
        if len(counts) != len(bounds) + 1:
            raise ValueError("a histogram needs one count per bound plus one for +Inf")
        running = 0
        for bound, count in zip(list(bounds) + [math.inf], counts):
            running += int(count)
            self.add(running, dict(labels, le=format_value(bound)), "_bucket")
        self.add(total, labels, "_sum")
        self.add(running, labels, "_count")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers without a fraction (counters read better), +Inf/-Inf/NaN as Prometheus spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    for name, _ in labels:
        if not LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    return "{" + ",".join(f'{name}="{escape_label(str(value))}"' for name, value in labels) + "}"


def render(families: Sequence[Family]) -> str:
    """The exposition text; families without samples are left out (a family is never empty)."""
    out: List[str] = []
    seen: Dict[str, None] = {}
    for fam in families:
        if not METRIC_NAME.match(fam.name):
            raise ValueError(f"invalid metric name {fam.name!r}")
        if fam.kind not in KINDS:
            raise ValueError(f"invalid metric type {fam.kind!r}")
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name!r} twice")
        seen[fam.name] = None
        if not fam.samples:
            continue
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.kind}")
        series = set()
        for s in fam.samples:
            key = (s.suffix, s.labels)
            if key in series:
                raise ValueError(f"{fam.name}{s.suffix}{_labels(s.labels)} twice")
            series.add(key)
            out.append(f"{fam.name}{s.suffix}{_labels(s.labels)} {format_value(s.value)}")
    return "\n".join(out) + "\n" if out else ""
