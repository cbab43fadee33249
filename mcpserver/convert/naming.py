"""Names Istio accepts: DNS-1123 hosts and resource names, Kubernetes label syntax.

Registry data is free text (Dubbo interfaces are Java class names, Consul tags anything); what
reaches istiod must pass its validation (pkg/config/labels/instance.go,
pkg/config/validation/agent/validation.go), so every registry sends names through here.
"""

from __future__ import annotations

import hashlib
import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_NOT_HOST = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


def is_dns1123_label(value: str) -> bool:
    return len(value) <= DNS1123_LABEL_MAX and bool(_LABEL_RE.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return 0 < len(value) <= DNS1123_SUBDOMAIN_MAX and all(
        is_dns1123_label(part) for part in value.split(".")
    )


def _shorten(value: str, limit: int) -> str:
    """Cut to `limit`, keeping names unique with a short hash of the whole."""
    if len(value) <= limit:
        return value
    digest = hashlib.blake2b(value.encode(), digest_size=4).hexdigest()
    return value[: limit - 9].rstrip("-.") + "-" + digest


def sanitize_label(value: str) -> str:
    """Any text to one DNS-1123 label (lower case, '-' for the rest, at most 63)."""
    label = re.sub(r"-+", "-", _NOT_HOST.sub("-", value.lower()).replace(".", "-")).strip("-")
    return _shorten(label, DNS1123_LABEL_MAX).strip("-") or "x"


# lower-case labels of letters and digits, single hyphens between them, joined by dots: what
# sanitize_host leaves as it is (when no label is longer than 63 and the host not than 253)
_CLEAN_HOST = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*(?:\.[a-z0-9]+(?:-[a-z0-9]+)*)*")


def sanitize_host(value: str) -> str:
    """Any text to a DNS-1123 host name: each dot-separated part becomes a valid label.
    A Dubbo interface (`com.example.Greeter`) is a clean host once lower-cased: returned
    without sanitizing each label (a cold start renders 10k of them)."""
    lowered = value.lower()
    if (
        len(lowered) <= DNS1123_SUBDOMAIN_MAX
        and _CLEAN_HOST.fullmatch(lowered)
        and (
            len(lowered) <= DNS1123_LABEL_MAX
            or max(map(len, lowered.split("."))) <= DNS1123_LABEL_MAX
        )
    ):
        return lowered
    parts = [sanitize_label(part) for part in lowered.split(".") if part.strip("-_ ")]
    host = ".".join(parts) or "x"
    return _shorten(host, DNS1123_SUBDOMAIN_MAX)


def render_host(template: str, name: str, namespace: str, registry: str) -> str:
    """Fill a naming template such as `{name}.{namespace}.svc.mesh`."""
    return template.format(name=name, namespace=namespace, registry=registry)


def is_label_key(key: str) -> bool:
    """Kubernetes label key: optional DNS prefix and '/', then a qualified name <= 63."""
    prefix, sep, name = key.rpartition("/")
    if sep and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= DNS1123_LABEL_MAX and bool(_QUALIFIED.match(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= DNS1123_LABEL_MAX and bool(_QUALIFIED.match(value)))


def sanitize_label_value(value: str) -> str:
    """Any text to a valid label value (may be empty)."""
    cleaned = _NOT_LABEL_VALUE.sub("-", value).strip("-_.")
    if len(cleaned) > DNS1123_LABEL_MAX:
        cleaned = _shorten(cleaned, DNS1123_LABEL_MAX).strip("-_.")
    return cleaned


def sanitize_label_key(key: str) -> str:
    """Any text to a valid label key (the prefix, if any, is kept only when valid)."""
    prefix, sep, name = key.rpartition("/")
    name = sanitize_label_value(name) or "x"
    if sep and is_dns1123_subdomain(prefix):
        return f"{prefix}/{name}"
    return name
