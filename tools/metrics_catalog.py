"""What engine/obs/metrics.py exports, and which metric names a PromQL expression reads.

Shared by the dashboard generator, the operations docs generator and the tests that
check dashboards and alert rules only use metrics the engine really has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from engine.obs import metrics
from engine.obs.metrics import REGISTRY

# Series a family of each type exposes (prometheus_client strips `_total`/`_info` from
# the family name; `_created` series are disabled in engine/obs/metrics.py).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One metric family declared in engine/obs/metrics.py."""

    name: str  # family name as exposed in # HELP / # TYPE (counter without `_total`)
    type: str
    help: str
    labels: tuple[str, ...]

    @property
    def series(self) -> tuple[str, ...]:
        """Names of the series this family exposes, e.g. `hl7engine_acks_total`."""
        return tuple(self.name + suffix for suffix in _SUFFIXES[self.type])


def engine_metrics() -> list[MetricInfo]:
    """Every `hl7engine_*` family, in declaration order."""
    found: list[MetricInfo] = []
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        # Label names are only kept privately by prometheus_client; the rest is public.
        labels = tuple(getattr(value, "_labelnames", ()))
        for family in value.describe():
            found.append(MetricInfo(family.name, family.type, family.documentation, labels))
    return found


def exposed_series() -> frozenset[str]:
    """Every series name /metrics can hold: the engine's and the process/platform collectors'."""
    names: set[str] = set()
    for info in engine_metrics():
        names.update(info.series)
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


# ---------------------------------------------------------------- PromQL

_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2", "start", "end",
})
_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def expr_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and $variables removed).

    A reviewer's check, not a parser: strings, label matchers, ranges, grouping clauses and
    Grafana variables are cut out first, then every bare identifier not followed by `(`
    is a metric name.
    """
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*(\{[^{}]*\})?")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text or "") for every metric selector in `expr`."""
    # Label names and string values could match too, but only metric names are kept.
    wanted = expr_metric_names(expr)
    return [(m.group(1), m.group(2) or "") for m in _SELECTOR.finditer(expr)
            if m.group(1) in wanted and not _is_call(expr, m.end(1))]


def _is_call(text: str, end: int) -> bool:
    rest = text[end:].lstrip()
    return rest.startswith("(")
