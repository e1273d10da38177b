"""What a ModelDeployment may name, as the cluster admin allows it.

Who may edit a ModelDeployment may change what its pods serve, never what code they
run or what they read besides the checkpoint. The admin sets these allowlists in the
chart; the operator refuses a spec outside them (in status), passes them to runtime
pods, and the runtime checks them again before it imports, opens or connects to
anything a spec names:

* architectures: ``torchvision`` (any torchvision model), ``torchvision/<name>``,
  ``python/<module>`` (factories defined in that module or its submodules, not names
  they import from elsewhere) or ``python/<module>:<factory>`` (that callable);
* runtime images: exact references, or prefixes ending in ``*``; empty allows only the
  chart's own runtime image;
* file roots: folders under which ``file://`` checkpoints may be read;
* networks: CIDRs that fetches may reach although they are loopback, link-local or
  (for redirects) private addresses.

Standard library only: the operator image has no torch.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence

DEFAULT_ARCHITECTURES = ("torchvision", "python/hotswap_runtime.examples")
MODELS_DIR = "/models"  # where the chart's runtime.modelVolume is mounted, read-only
EXAMPLES_DIR = "/opt/hotswap-examples"  # the quickstart's checkpoints, in the runtime image
DEFAULT_FILE_ROOTS = (MODELS_DIR, EXAMPLES_DIR)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = rf"{_IDENT}(?:\.{_IDENT})*"
ARCHITECTURE_ENTRY = re.compile(rf"^(?:torchvision(?:/{_IDENT})?|python/{_MODULE}(?::{_IDENT})?)$")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """An admin setting is malformed; the message names the setting."""


def split_list(raw: str | None) -> tuple[str, ...]:
    """A comma separated setting as a tuple of its non-empty, stripped items."""
    return tuple(item.strip() for item in (raw or "").split(",") if item.strip())


def check_architecture_entries(entries: Iterable[str]) -> tuple[str, ...]:
    """``entries`` unchanged, or PolicyError naming the first malformed one."""
    entries = tuple(entries)
    for entry in entries:
        if not ARCHITECTURE_ENTRY.match(entry):
            raise PolicyError(
                f"allowed architecture {entry!r} is malformed: use torchvision, "
                "torchvision/<name>, python/<module> or python/<module>:<factory>"
            )
    return entries


def architecture_allowed(architecture: str, allowed: Iterable[str]) -> bool:
    """Whether ``architecture`` (``torchvision/<name>`` or ``python/<module>:<factory>``)
    is covered by an entry of ``allowed``. Module prefixes match whole dotted names only:
    ``python/pkg`` covers ``pkg`` and ``pkg.sub``, never ``pkg_evil``. The runtime then
    checks where the factory it finds is defined (``factory_allowed``)."""
    kind, _, target = architecture.partition("/")
    module = target.partition(":")[0]
    for entry in allowed:
        if entry == architecture or (kind == "torchvision" and entry == "torchvision"):
            return True
        if kind == "python" and _module_entry_covers(entry, module):
            return True
    return False


def factory_allowed(architecture: str, defined_in: str, allowed: Iterable[str]) -> bool:
    """Whether the factory that ``python/<module>:<factory>`` names, found defined in
    module ``defined_in`` (its ``__module__``), may be called. An entry naming exactly
    ``architecture`` allows it: the admin chose that callable. A module entry
    ``python/<module>`` allows the factories defined in that module or its submodules,
    never a name one of them merely imports (``from subprocess import run``)."""
    allowed = tuple(allowed)
    if architecture in allowed:
        return True
    return bool(defined_in) and any(_module_entry_covers(e, defined_in) for e in allowed)


def _module_entry_covers(entry: str, module: str) -> bool:
    """Whether ``entry`` is ``python/<prefix>`` and ``module`` is it or below it."""
    prefix = entry.removeprefix("python/")
    if not entry.startswith("python/") or ":" in prefix:
        return False
    return module == prefix or module.startswith(prefix + ".")


def architecture_refusal(architecture: str, allowed: Sequence[str]) -> str:
    """The reason given for an architecture outside the allowlist."""
    shown = ", ".join(allowed) if allowed else "(none)"
    return (
        f"architecture {architecture} is not allowed in this cluster (allowed: {shown}); "
        "use an allowed one, or ask the cluster admin to add it to the chart value "
        "policy.architectures"
    )


def image_allowed(image: str, allowed: Iterable[str], default_image: str) -> bool:
    """Whether a ModelDeployment may run ``image``: the chart's runtime image always,
    otherwise an exact entry or a prefix entry ending in ``*`` (``*`` alone: any)."""
    if image == default_image:
        return True
    for entry in allowed:
        if entry == image or (entry.endswith("*") and image.startswith(entry[:-1])):
            return True
    return False


def normalized_root(root: str) -> str:
    if not root.startswith("/"):
        raise PolicyError(f"file root {root!r} is not an absolute path")
    return posixpath.normpath(root)


def path_under(path: str, roots: Iterable[str]) -> bool:
    """Whether absolute ``path`` lies under one of ``roots``, judged on the normalized
    text (``..`` resolved). The runtime also checks the file it actually opened."""
    if not path.startswith("/"):
        return False
    clean = posixpath.normpath(path)
    for root in roots:
        base = normalized_root(root)
        if base == "/" or clean == base or clean.startswith(base + "/"):
            return True
    return False


def parse_networks(entries: Iterable[str]) -> tuple[IpNetwork, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise PolicyError(f"allowed network {entry!r} is not a CIDR, e.g. 10.0.0.0/8") from None
    return tuple(networks)


def address_refusal(address: str, allowed: Sequence[IpNetwork], redirect: bool) -> str | None:
    """Why a fetch may not connect to ``address``, or None when it may.

    Loopback, link-local (cloud metadata endpoints), unspecified, multicast and reserved
    addresses are refused for every connection; private addresses (RFC 1918, unique
    local, shared CGNAT space) only when a redirect leads there: the spec's own URI may
    name in-cluster storage. ``allowed`` networks override both.
    """
    try:
        ip: IpAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return None
    kind = _special(ip)
    if kind is None and redirect and (ip.is_private or ip in _CGNAT):
        kind = "a private address"
    if kind is None:
        return None
    where = "a redirect to " if redirect else ""
    return (
        f"{where}{kind} is refused; the cluster admin can allow it in the chart value "
        "policy.fetchAllowedNetworks"
    )


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _special(ip: IpAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata endpoints live there)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "a reserved address"
    return None
