"""CLIP text embeddings of class names for PoCO: open_clip weights found offline first, and a disk cache.

Two embeddings are offered: "pooled" (`encode_text`, the usual CLIP text embedding the paper
describes) and "hidden" (the authors' release: the ln_final hidden state of all 77 tokens, padded
with end-of-text, flattened). Weights come from a local copy when one exists (Hugging Face cache or
~/.cache/clip); they are downloaded only when online, and any failure is one line that names the
orderings that need no CLIP. Embeddings are cached per model, weights, variant and class list
($PODD_CACHE_DIR/clip_text, else ~/.cache/podd-kit/clip_text).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from .errors import PoddError
from .io import atomic_torch_save

VARIANTS = ("pooled", "hidden")
_FALLBACK_HINT = "use --order paper|identity|random:SEED|file:PATH instead"
_CACHE_FORMAT = 1
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _truthy_env(name: str) -> bool:
    """Whether an environment variable is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _slug(text: str, limit: int = 48) -> str:
    """A file-name-safe short form of text."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:limit] or "x"


def default_cache_dir() -> Path:
    """Embedding cache folder: $PODD_CACHE_DIR/clip_text, else ~/.cache/podd-kit/clip_text."""
    root = os.environ.get("PODD_CACHE_DIR") or Path.home() / ".cache" / "podd-kit"
    return Path(root) / "clip_text"


def _weights_label(pretrained: str | None, init_seed: int) -> str:
    """The weights part of the cache key: the pretrained tag or path, or the random-init seed."""
    return f"random-init-seed{init_seed}" if pretrained is None else str(pretrained)


def embedding_cache_path(classes: Sequence[str], variant: str, model_name: str,
                         pretrained: str | None, cache_dir: str | os.PathLike | None = None,
                         init_seed: int = 0) -> Path:
    """Cache file for these embeddings, keyed by model, weights, variant and the class-list hash."""
    weights = _weights_label(pretrained, init_seed)
    class_hash = hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16]
    key = json.dumps([_CACHE_FORMAT, model_name, weights, variant, class_hash])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"{_slug(model_name)}_{_slug(Path(weights).name)}_{variant}_{class_hash}_{digest}.pt"
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name


def _read_cache(path: Path, classes: Sequence[str]) -> Any:
    """The cached embedding tensor at path, or None when absent, unreadable or for other classes."""
    import torch
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(blob, dict) or blob.get("classes") != list(classes):
        return None
    emb = blob.get("embeddings")
    return emb if isinstance(emb, torch.Tensor) and emb.shape[0] == len(classes) else None


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Quick probe: can host:443 be reached (assumed yes when an HTTPS proxy is configured)?"""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_candidates(hub: str) -> tuple[str, list[str]]:
    """Repo id and weight file names (safetensors first) of an open_clip 'org/repo/[file]' entry."""
    repo_id, filename = os.path.split(hub)  # a trailing '/' means open_clip's default file names
    if not filename:
        return repo_id, list(_HF_WEIGHT_NAMES)
    safe = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return repo_id, safe + [filename]


def _cached_weight_file(entry: dict, weights_dir: str | None) -> str | None:
    """A local copy of the weights a pretrained config points to, or None (never downloads)."""
    if entry.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        repo_id, names = _hf_candidates(entry["hf_hub"])
        for name in names if try_to_load_from_cache else []:
            found = try_to_load_from_cache(repo_id, name, cache_dir=weights_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if entry.get("url"):
        local = Path(weights_dir or Path.home() / ".cache" / "clip") / os.path.basename(entry["url"])
        if local.is_file():
            return str(local)
    return None


def _weights_host(entry: dict) -> str:
    """The host a pretrained config would download from."""
    if entry.get("hf_hub"):
        try:
            import huggingface_hub  # noqa: F401
            return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        except ImportError:
            pass
    return urlparse(entry.get("url", "")).hostname or "huggingface.co"


def _weights_file(model_name: str, pretrained: str, weights_dir: str | None) -> tuple[str, bool]:
    """Local path of the CLIP weights (downloading only when online) and whether they need QuickGELU."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    fail = f"CLIP weights could not be loaded ({model_name}, {pretrained})"
    if os.path.isfile(pretrained):
        return pretrained, False
    entry = get_pretrained_cfg(model_name, pretrained)
    if not entry:
        raise PoddError(f"{fail}: not a known open_clip tag or an existing file; {_FALLBACK_HINT}")
    quick_gelu = bool(entry.get("quick_gelu", False))
    local = _cached_weight_file(entry, weights_dir)
    if local:
        return local, quick_gelu
    if _truthy_env("HF_HUB_OFFLINE") or _truthy_env("PODD_OFFLINE"):
        raise PoddError(f"{fail}: not in the local cache and offline mode is set; {_FALLBACK_HINT}")
    host = _weights_host(entry)
    if not _hub_reachable(host):
        raise PoddError(f"{fail}: not in the local cache and {host} cannot be reached; {_FALLBACK_HINT}")
    try:
        return download_pretrained(entry, cache_dir=weights_dir), quick_gelu
    except Exception as exc:
        raise PoddError(f"{fail}: download failed ({_first_line(exc)}); {_FALLBACK_HINT}") from exc


def load_clip(model_name: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "cpu",
              weights_dir: str | None = None, init_seed: int = 0) -> Any:
    """An open_clip model in eval mode; pretrained=None gives random weights seeded by init_seed."""
    import open_clip
    import torch
    try:
        if pretrained is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        else:
            path, quick_gelu = _weights_file(model_name, pretrained, weights_dir)
            model = open_clip.create_model(model_name, pretrained=path, device="cpu",
                                           force_quick_gelu=quick_gelu)
    except PoddError:
        raise
    except Exception as exc:
        raise PoddError(f"CLIP weights could not be loaded ({model_name}, {pretrained}): "
                        f"{_first_line(exc)}; {_FALLBACK_HINT}") from exc
    return model.to(device).eval()


def tokenize_classes(classes: Sequence[str], model_name: str = "ViT-B-32",
                     pad_with_eot: bool = False) -> Any:
    """CLIP tokens (n, 77) of the class names with underscores as spaces; optionally EOT-padded."""
    import open_clip
    import torch
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer([c.replace("_", " ") for c in classes])
    if not pad_with_eot:
        return tokens
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is None:
        raise PoddError(f"the {model_name} tokenizer has no end-of-text id; use variant='pooled'")
    first_eot = (tokens == eot).int().argmax(dim=-1)
    after = torch.arange(tokens.shape[1])[None, :] > first_eot[:, None]
    return tokens.masked_fill(after, eot)


def final_hidden_states(model: Any, tokens: Any) -> Any:
    """ln_final output (n, context, width) for every token, computed as inside CLIP.encode_text."""
    import torch
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(model, a) for a in needed):
        raise PoddError(f"{type(model).__name__} has no built-in CLIP text tower; use variant='pooled'")
    cast = model.transformer.get_cast_dtype() if hasattr(model.transformer, "get_cast_dtype") else torch.float32
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding.to(cast)
    if getattr(model.transformer, "batch_first", False):
        x = model.transformer(x, attn_mask=model.attn_mask)
    else:  # older open_clip: sequence-first transformer
        x = model.transformer(x.permute(1, 0, 2), attn_mask=model.attn_mask).permute(1, 0, 2)
    return model.ln_final(x)


def encode_classes(model: Any, classes: Sequence[str], variant: str = "pooled",
                   model_name: str = "ViT-B-32") -> Any:
    """Embeddings (n, D) of the class names with an already loaded model (float32, on the CPU)."""
    import torch
    if variant not in VARIANTS:
        raise PoddError(f"unknown CLIP embedding variant {variant!r}; use one of {', '.join(VARIANTS)}")
    device = next(model.parameters()).device
    tokens = tokenize_classes(classes, model_name, pad_with_eot=(variant == "hidden")).to(device)
    with torch.no_grad():
        if variant == "pooled":
            emb = model.encode_text(tokens)
        else:
            emb = final_hidden_states(model, tokens).flatten(1)
    return emb.float().cpu()


def clip_text_embeddings(classes: Sequence[str], variant: str = "pooled", model_name: str = "ViT-B-32",
                         pretrained: str | None = "openai", cache_dir: str | os.PathLike | None = None,
                         device: str = "cpu", weights_dir: str | None = None,
                         init_seed: int = 0) -> Any:
    """CLIP text embeddings (n, D) of the class names, read from or written to the disk cache."""
    classes = list(classes)
    if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise PoddError("classes must be a non-empty list of non-empty class names")
    if variant not in VARIANTS:
        raise PoddError(f"unknown CLIP embedding variant {variant!r}; use one of {', '.join(VARIANTS)}")
    path = embedding_cache_path(classes, variant, model_name, pretrained, cache_dir, init_seed)
    cached = _read_cache(path, classes)
    if cached is not None:
        return cached
    model = load_clip(model_name, pretrained, device, weights_dir, init_seed)
    emb = encode_classes(model, classes, variant, model_name)
    atomic_torch_save({"format": _CACHE_FORMAT, "model_name": model_name,
                       "weights": _weights_label(pretrained, init_seed), "variant": variant,
                       "classes": classes, "embeddings": emb}, path)
    return emb
