"""Where pretrained weights come from: whether open_clip's download of a tag is cached on this machine, whether its
host can be reached at all (asked once, with a short timeout), and the models and tags that fit this project.

open_clip downloads a tag's weights from the Hugging Face hub (or a URL) and caches them; offline with nothing
cached, the hub's client retries for about a minute before it gives up. `check_download` answers in a few seconds
instead: a cached file, the hub's offline mode, or an unreachable host decide before any download starts.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

from .errors import WeightsUnavailable

CONNECT_TIMEOUT_S = 3.0  # the longest a run waits to learn that the weights' host cannot be reached
URL_CACHE = "~/.cache/clip"  # where open_clip keeps weights downloaded from a URL (its download_pretrained_from_url)
_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class Tag:
    """One open_clip pretrained tag of a model: where it downloads from and the cached file, if any."""

    model: str
    tag: str
    source: str  # "hf-hub:<repo>/<file>" or the URL
    cached: Optional[str]  # the cached file's path, None when not cached here


def _hub_files(hf_hub: str) -> tuple[str, list[str]]:
    """The repository and the file names open_clip tries for an ``hf_hub`` entry (safetensors first)."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if hf_hub.endswith("/"):  # open_clip's convention: a repository without a file name holds its default file
        repo, filename = hf_hub[:-1], HF_WEIGHTS_NAME
    else:
        repo, filename = os.path.split(hf_hub)
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _uses_hub(cfg: dict) -> bool:
    from open_clip.pretrained import has_hf_hub

    return bool(cfg.get("hf_hub")) and has_hf_hub()


def cached_file(cfg: dict) -> Optional[str]:
    """The local file open_clip would load for the pretrained config ``cfg`` without downloading, or None."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if _uses_hub(cfg):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hub_files(cfg["hf_hub"])
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    if cfg.get("url"):
        path = os.path.join(os.path.expanduser(URL_CACHE), os.path.basename(cfg["url"]))
        return path if os.path.isfile(path) else None
    return None


def _source(cfg: dict) -> str:
    return f"hf-hub:{cfg['hf_hub']}" if _uses_hub(cfg) else cfg.get("url", "")


def hub_offline() -> bool:
    """The Hugging Face hub's offline mode (``HF_HUB_OFFLINE=1``): no request is made."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _host_of(source: str) -> tuple[str, int]:
    """The host and port a download from ``source`` connects to first (a proxy when one is set)."""
    if source.startswith("hf-hub:"):
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    else:
        url = urlparse(source)
    names = ("HTTPS_PROXY", "https_proxy") if url.scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names if os.environ.get(n)), None)
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds (name lookup included), else
    why not."""
    import socket

    outcome: list = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(" ".join(str(e).split()) or type(e).__name__)

    worker = threading.Thread(target=connect, daemon=True)  # a stuck name lookup is left behind, not waited for
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def offline_hint(what: str, reason: str = "no network and nothing cached?") -> str:
    return (f"could not get pretrained weights {what} ({reason}): pass a local checkpoint with --pretrained PATH, "
            "run once with network so open_clip caches the download, or use --pretrained none for random weights "
            "(pointfalip models lists what is cached here)")


def check_download(model: str, tag: str) -> None:
    """Return at once when the weights of ``tag`` for ``model`` are cached or their host answers; else raise
    `WeightsUnavailable` (one line saying what to do) within `CONNECT_TIMEOUT_S`."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg or cached_file(cfg):
        return
    what = f"'{tag}' for {model}"
    if _uses_hub(cfg) and hub_offline():
        raise WeightsUnavailable(offline_hint(what, "not cached here, and HF_HUB_OFFLINE is set"))
    host, port = _host_of(_source(cfg))
    why = reachable(host, port)
    if why is not None:
        raise WeightsUnavailable(offline_hint(what, f"not cached here, and {host} cannot be reached: {why}"))


def check_hub_repo(repo: str) -> None:
    """`check_download` for an ``hf-hub:`` model id: cached (its config and weights) or the hub reachable."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "open_clip_config.json")
    if isinstance(config, str):
        return
    what = f"'hf-hub:{repo}'"
    if hub_offline():
        raise WeightsUnavailable(offline_hint(what, "not cached here, and HF_HUB_OFFLINE is set"))
    host, port = _host_of("hf-hub:")
    why = reachable(host, port)
    if why is not None:
        raise WeightsUnavailable(offline_hint(what, f"not cached here, and {host} cannot be reached: {why}"))


def is_foveal_model(name: str) -> bool:
    """Whether open_clip's config ``name`` has a ViT image tower built by open_clip (a patch grid for the masks)."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    vision = cfg.get("vision_cfg", {})
    return bool(vision.get("patch_size")) and not vision.get("timm_model_name")


def list_tags(all_models: bool = False) -> list[Tag]:
    """Every (model, tag) of open_clip's registry whose model has a ViT image tower (with ``all_models``, every
    model), with its cached file if there is one."""
    import open_clip

    tags = []
    for model, tag in open_clip.list_pretrained():
        if not all_models and not is_foveal_model(model):
            continue
        cfg = open_clip.get_pretrained_cfg(model, tag)
        tags.append(Tag(model, tag, _source(cfg), cached_file(cfg)))
    return tags
