"""The cluster admin's policy, applied to a ModelDeployment before anything is built.

Who may edit a ModelDeployment may choose what its pods serve, never what code they
run or what they read besides checkpoints. A spec that names an architecture, a runtime
image, an environment variable or a file outside the chart's `policy` values is refused
here, in status (phase Failed, with the reason and the fix); the runtime checks the
architecture, files and network addresses again itself (hotswap_contract.policy).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from hotswap_contract import schemes
from hotswap_contract.policy import (
    architecture_allowed,
    architecture_refusal,
    image_allowed,
    path_under,
)
from hotswap_operator.config import Policy, RuntimeDefaults
from hotswap_operator.spec import DeploymentSpec, SpecError


def admit(spec: DeploymentSpec, defaults: RuntimeDefaults, name: str) -> None:
    """Raise SpecError naming every field of ``spec`` that the policy refuses."""
    policy = defaults.policy
    problems = [
        *_architecture(spec, policy),
        *_image(spec, policy, defaults.image),
        *_env(spec, policy),
        *_files(spec, policy),
    ]
    if problems:
        raise SpecError(f"ModelDeployment {name}: " + "; ".join(problems))


def _architecture(spec: DeploymentSpec, policy: Policy) -> list[str]:
    architecture = spec.model.architecture
    if architecture_allowed(architecture, policy.architectures):
        return []
    return [f"spec.model.architecture: {architecture_refusal(architecture, policy.architectures)}"]


def _image(spec: DeploymentSpec, policy: Policy, default_image: str) -> list[str]:
    image = spec.runtime.image
    if image is None or image_allowed(image, policy.images, default_image):
        return []
    return [
        f"spec.runtime.image: {image!r} is not an allowed runtime image in this cluster; "
        "remove it to use the default runtime image, or ask the cluster admin to add it "
        "to the chart value policy.images"
    ]


def _env(spec: DeploymentSpec, policy: Policy) -> list[str]:
    refused = [e.name for e in spec.runtime.env if not _env_allowed(e.name, policy.runtime_env)]
    if not refused:
        return []
    return [
        f"spec.runtime.env: {', '.join(refused[:5])} may not be set by a ModelDeployment "
        f"(allowed: {', '.join(policy.runtime_env)}); remove them, or ask the cluster admin "
        "to add them to the chart value policy.runtimeEnv"
    ]


def _env_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    return any(
        entry == name or (entry.endswith("*") and name.startswith(entry[:-1])) for entry in allowed
    )


def _files(spec: DeploymentSpec, policy: Policy) -> list[str]:
    named = [("spec.checkpoint.uri", spec.checkpoint.uri)]
    if spec.validation is not None:
        named += [(f"spec.validation.{f}.uri", file.uri) for f, file in spec.validation.files()]
    return [
        f"{field}: {reason}"
        for field, uri in named
        if (reason := file_refusal(uri, policy.file_roots)) is not None
    ]


def file_refusal(uri: str, roots: tuple[str, ...]) -> str | None:
    """Why a file:// URI may not be read, or None (also for other schemes)."""
    parts = urlsplit(uri)
    if parts.scheme != schemes.FILE:
        return None
    if parts.netloc not in ("", "localhost"):
        return "a file:// URI names a local path (file:///path), not a host"
    if not path_under(unquote(parts.path), roots):
        shown = ", ".join(roots) or "(none)"
        return (
            f"file:// checkpoints must lie under {shown}; copy the file there, use s3:// or "
            "https://, or ask the cluster admin to add a folder to the chart value "
            "policy.fileRoots"
        )
    return None
