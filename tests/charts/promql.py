"""The metric names a PromQL expression reads, without a PromQL parser (none installs offline).

A metric name is an identifier that stands where a series selector stands: followed by ``{`` or
``[``, or alone. Everything else is removed first: string literals, label matchers inside braces,
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` label lists, durations,
numbers, Grafana variables (``$namespace``, ``$__rate_interval``, ``${datasource}``), then the
function names and keywords below.
"""

from __future__ import annotations

import re

_WORDS = """
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln
    log10 log2 mad_over_time max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sort_by_label
    sort_by_label_desc sqrt stddev_over_time stdvar_over_time sum_over_time time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
    label_values query_result
    and or unless bool offset by without on ignoring group_left group_right
"""
FUNCTIONS = frozenset(_WORDS.split())
"""PromQL's functions, aggregations and keywords, and Grafana's query-variable functions."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_BRACES = re.compile(r"\{[^{}]*\}")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (``rate(mesh_requests_total{code="OK"}[5m])`` ->
    ``{"mesh_requests_total"}``)."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _BRACES.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in FUNCTIONS}


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def equality_matchers(expr: str) -> set[tuple[str, str, str]]:
    """``(metric, label, value)`` for each ``label="value"`` in a selector whose value holds no
    variable: the label values an expression expects the pods to export."""
    found = set()
    for metric, inner in _SELECTOR.findall(expr):
        for label, op, value in _MATCHER.findall(inner):
            if op == "=" and "$" not in value:
                found.add((metric, label, value))
    return found
