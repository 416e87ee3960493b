"""Host-side input preparation per model family, registered by the name the manifest records."""

from __future__ import annotations

from typing import Any

from runtime.artifact import ArtifactError
from runtime.families.base import HostFamily, Positions, PromptInputs
from runtime.families.llava import LlavaHost
from runtime.families.llava_next import LlavaNextHost
from runtime.families.llava_video import LlavaVideoHost
from runtime.families.qwen2_vl import Qwen2VLHost

HOST_FAMILIES: dict[str, type[HostFamily]] = {family.name: family for family in (LlavaHost, LlavaNextHost, Qwen2VLHost, LlavaVideoHost)}


def host_family(manifest: dict[str, Any]) -> HostFamily:
    """The host side of the manifest's model family, configured from the manifest."""
    name = manifest["model"]["family"]
    if name not in HOST_FAMILIES:
        raise ArtifactError(f"unknown model family {name!r} in the manifest; this runtime knows {', '.join(HOST_FAMILIES)}")
    return HOST_FAMILIES[name](manifest)


__all__ = ["HOST_FAMILIES", "HostFamily", "Positions", "PromptInputs", "host_family"]
