"""Which segment a container is in.

Docker never shows a network driver the container's labels; the plugin
looks them up (``plugin/labels.py``) and asks :func:`decide_segment`, which
applies the contract's order:

1. the endpoint driver-opt ``secnet.segment`` (``docker network connect
   --driver-opt secnet.segment=web``) wins;
2. else the container label named by the network option
   ``secnet.segment-label`` (default ``secnet.segment``);
3. a container without that label is in the network's default segment;
4. a label whose value is no valid segment name (an empty value included)
   quarantines the container: segment ``None`` and a one-line reason.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

from .errors import shown
from .names import segment_name_problem
from .options import NetworkOptions

SEGMENT_OPT = "secnet.segment"

Decision = Tuple[Optional[str], Optional[str]]  # (segment, quarantine reason)


def decide_segment(options: NetworkOptions, driver_opt: Optional[str],
                   labels: Optional[Mapping[str, str]]) -> Decision:
    """The container's ``(segment, quarantine_reason)``; exactly one is not None."""
    if driver_opt is not None:
        return _checked("driver-opt", SEGMENT_OPT, driver_opt)
    key = options.segment_label
    if labels is None or key not in labels:
        return options.default_segment, None
    return _checked("label", key, labels[key])


def _checked(source: str, key: str, value: object) -> Decision:
    problem = segment_name_problem(value)
    if problem is None:
        return value, None  # type: ignore[return-value]
    return None, (f"{source} {shown(key)}='{shown(value)}' is not a valid segment name: "
                  f"{problem}")
