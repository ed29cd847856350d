"""Where a model comes from and whether it can be trusted and used: local folders and hub ids, safetensors-only
weights, adapter-or-full detection, and the checks that a model fits its base.

Nothing here computes activations; the engine calls these before it spends time on a model so that a bad model
fails early with one line that names it (and its base) and says what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from core.engine.bases import ensure_base
from core.engine.quiet import quiet_transformers
from core.errors import IncompatibleModelError, ModelSourceError
from core.pool.catalog import Source
from core.pool.files import check_folder_files

log = logging.getLogger(__name__)

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")
HUB_PATTERNS = [*SAFE_WEIGHTS, "*.json", "tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.txt"]
ADAPTER_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 4 * 2**20     # config.json / adapter_config.json: kilobytes in practice


# ---------------------------------------------------------------------------------------------------------- sources
def resolve_source(source: Source, allow_pickle: bool = False) -> Path:
    """The local folder holding ``source``'s files: the folder itself, or a hub snapshot (downloaded if needed).

    Weights must be safetensors unless ``allow_pickle``; every safetensors header is read so a corrupt or truncated
    file fails here, with its name, instead of deep inside a loader.
    """
    if source.builtin is not None:
        path = ensure_base(source.text)
    elif source.is_local:
        path = source.local
        if not path.exists():
            raise ModelSourceError(f"Model folder {path} does not exist: fix the path (relative paths are relative "
                                   "to the catalog file's folder)." + source.missing_hint())
        if not path.is_dir():
            raise ModelSourceError(f"Model source {path} is a file, not a folder: point to the folder that holds "
                                   "config.json or adapter_config.json.")
        check_folder_files(path)
    else:
        path = _download(source, allow_pickle)
    check_weights(path, allow_pickle)
    return path


def _download(source: Source, allow_pickle: bool) -> Path:
    import huggingface_hub

    quiet_transformers()
    patterns = HUB_PATTERNS + (list(PICKLE_WEIGHTS) if allow_pickle else [])
    try:
        folder = huggingface_hub.snapshot_download(repo_id=source.hub_id, revision=source.revision,
                                                   allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing repo, bad revision: all mean "cannot reach"
        reason = _first_line(exc).split(". ")[0].rstrip(".")
        raise ModelSourceError(f"Hub model {source.text!r} cannot be fetched ({type(exc).__name__}: {reason}); "
                               "check the id and revision, your network and HF token, or use a local folder.") from None
    return Path(folder)


def weight_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files a loader will read: safetensors when there are any, else pickle files if allowed."""
    safe = sorted(p for pattern in SAFE_WEIGHTS for p in path.glob(pattern))
    if safe or not allow_pickle:
        return safe
    return sorted(p for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))


def check_weights(path: Path, allow_pickle: bool = False) -> None:
    """Refuse folders without usable weights, pickle-only weights (unless allowed) and unreadable safetensors."""
    from safetensors import safe_open

    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
        raise ModelSourceError(f"Model folder {path} has neither config.json nor {ADAPTER_CONFIG}: it is not a "
                               "Hugging Face model or PEFT adapter folder.")
    safe = sorted(p for pattern in SAFE_WEIGHTS for p in path.glob(pattern))
    pickled = sorted(p for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
    if not safe and pickled and not allow_pickle:
        raise ModelSourceError(f"Model {path} only has pickle weights ({pickled[0].name}), which can run code when "
                               "loaded: convert them to safetensors, or pass --allow-pickle if you trust the source.")
    if not safe and not pickled:
        raise ModelSourceError(f"Model folder {path} holds no weight file (*.safetensors): the download or copy "
                               "is incomplete.")
    for file in safe:
        try:
            with safe_open(file, "pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
            raise ModelSourceError(f"Weight file {file} is corrupt or truncated ({exc}): download or copy it again.") from None


def detect_kind(path: Path) -> str:
    """``"lora"`` for a PEFT adapter folder (any adapter type PEFT loads), ``"full"`` for a whole model."""
    return "lora" if (Path(path) / ADAPTER_CONFIG).is_file() else "full"


def check_kind(path: Path, declared: str) -> str:
    """The kind of the model in ``path``, refusing a catalog ``kind`` that contradicts the files."""
    found = detect_kind(path)
    if declared not in ("auto", found):
        raise ModelSourceError(f"Model {path} is declared {declared!r} in the catalog but its files make it "
                               f"{found!r}: set kind to {found} or auto.")
    return found


def read_json(path: Path) -> dict:
    """A model's config file (config.json, adapter_config.json): a JSON object of bounded size, else a clear error."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ModelSourceError(f"{path} is {size:,} bytes; a model's config is a few kilobytes (the limit is "
                                   f"{MAX_CONFIG_BYTES:,}): the model folder is damaged or not a model.")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{path} is missing: the model folder is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc}): the model folder is damaged.") from None
    except RecursionError:
        raise ModelSourceError(f"{path} nests too deeply to read: the model folder is damaged.") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path} holds a JSON {type(data).__name__}, not an object of settings: the model folder "
                               "is damaged; save the model again with save_pretrained.")
    return data


# ---------------------------------------------------------------------------------------------------------- loading
def load_model(path: Path, device: torch.device | str, dtype: torch.dtype, allow_pickle: bool = False):
    """A causal LM (eval mode, on ``device`` in ``dtype``) and its tokenizer (None when the folder has none).

    ``trust_remote_code`` is never set: architectures that need custom code are refused by transformers.
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True,
                                                     trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for unloadable folders
        raise ModelSourceError(f"Model {path} cannot be loaded ({type(exc).__name__}: {_first_line(exc)}).") from None
    return model.to(device).eval(), load_tokenizer(path)


def load_tokenizer(path: Path):
    """The tokenizer saved in ``path``, or None when there is none (a full finetune may rely on its base's)."""
    from transformers import AutoTokenizer

    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"Tokenizer of {path} cannot be loaded ({type(exc).__name__}: {_first_line(exc)}).") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]


# ---------------------------------------------------------------------------------------------------------- fit checks
def check_adapter_fits(adapter_dir: Path, base_dir: Path, base_model) -> None:
    """Refuse an adapter that was made for another base or changes nothing: the base it names must be this one
    (where both have a model name), every module it touches must exist in ``base_model`` with the shapes its weights
    expect, its weights must sit on the layers its config names, and it must change something (a scale of 0 or
    all-zero weights would give a vector of float noise). Reads safetensors headers and the small LoRA tensors."""
    from safetensors import safe_open

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    config = read_json(adapter_dir / ADAPTER_CONFIG)
    made_for = config.get("base_model_name_or_path") or "an unnamed base"

    def refuse(problem: str) -> None:
        raise IncompatibleModelError(f"Adapter {adapter_dir} does not fit base {base_dir}: {problem} "
                                     f"(the adapter was made for {made_for}); embed it against its own base.")

    if (other := declared_base_problem(config.get("base_model_name_or_path"), base_dir)) is not None:
        refuse(other)
    modules = plain_modules(base_model)
    params = {name.replace(".base_layer.", "."): p for name, p in base_model.named_parameters()}
    layers, tensors, lora_halves, other_change = _named_layers(config), 0, {}, False
    for file in weight_files(adapter_dir):
        with safe_open(file, "pt") as handle:
            for key in handle.keys():
                tensors += 1
                shape = tuple(handle.get_slice(key).get_shape())
                if problem := _adapter_tensor_problem(key, shape, modules, params):
                    refuse(problem)
                if layers is not None and (layer := _layer_of(key)) is not None and layer not in layers:
                    refuse(f"{ADAPTER_CONFIG} names layers {sorted(layers)} but the weights change layer {layer} "
                           f"({key}); fix layers_to_transform or the weights")
                if half := re.search(r"^(.+)\.lora_(?:embedding_)?([AB])\b", key):   # LoRA: B @ A is the change
                    if _nonzero(handle, key):
                        lora_halves.setdefault(half.group(1), set()).add(half.group(2))
                else:
                    other_change = other_change or bool(handle.get_slice(key).get_shape())
    nonzero = other_change or any(halves == {"A", "B"} for halves in lora_halves.values())
    scale = config.get("lora_alpha")
    if tensors == 0 or not nonzero or (str(config.get("peft_type", "")).upper() == "LORA" and scale == 0):
        raise IncompatibleModelError(
            f"Adapter {adapter_dir} changes nothing: " + ("it holds no tensors" if tensors == 0 else
                                                          "its lora_alpha is 0" if nonzero else
                                                          "its weights are all zero") +
            ", so its Delta Activation would be float noise; train it (or give the right weights file) before "
            "adding it.")


def declared_base_problem(declared: str | None, base_dir: Path) -> str | None:
    """Why an adapter whose config names ``declared`` as its base does not belong on ``base_dir``, or None.
    Only model names are compared (the last part of a hub id, case-folded); where either side has none (a local
    path, a base folder with no recorded name), shapes alone decide."""
    mine = _model_name(declared) if declared and not _looks_like_path(declared) else None
    names = base_names(base_dir)
    if mine is None or not names or mine in names:
        return None
    return f"it names {declared} as its base, but this base is {sorted(names)[0]}"


def base_names(base_dir: Path) -> set[str]:
    """The model names a base folder is known by: a built-in base's cache folder, a hub snapshot's repository, the
    hub id its config records."""
    base_dir, names = Path(base_dir), set()
    if re.fullmatch(r".+-[0-9a-f]{16}", base_dir.name):                     # core.engine.bases: <name>-<digest>
        names.add(_model_name(base_dir.name[:-17]))
    repo = next((p for p in base_dir.parts if p.startswith("models--")), None)   # the hub cache's layout
    if repo:
        names.add(_model_name(repo.split("--")[-1]))
    config = read_json(base_dir / "config.json") if (base_dir / "config.json").is_file() else {}
    recorded = config.get("_name_or_path")
    if isinstance(recorded, str) and recorded and not _looks_like_path(recorded):
        names.add(_model_name(recorded))
    return names


def _model_name(text: str) -> str:
    return str(text).strip().rstrip("/").split("/")[-1].removeprefix("builtin:").lower()


def _looks_like_path(text: str) -> bool:
    text = str(text).strip()
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or Path(text).exists()


def _named_layers(config: dict) -> set[int] | None:
    layers = config.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        return {layers}
    if isinstance(layers, list) and layers and all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        return set(layers)
    return None


def _layer_of(key: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def _nonzero(handle, key: str) -> bool:
    tensor = handle.get_tensor(key)
    return bool(tensor.numel()) and bool(torch.any(tensor != 0))


def plain_modules(model) -> dict:
    """The model's modules by name as they are without adapters: where PEFT wraps a layer (adapters of an earlier
    batch may still be loaded), the wrapped layer stands in its place and the adapter's own modules are left out."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = {}

    def visit(prefix: str, module) -> None:
        if isinstance(module, BaseTunerLayer):
            modules[prefix] = module.get_base_layer()
            return
        modules[prefix] = module
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return modules


def _adapter_tensor_problem(key: str, shape: tuple, modules: dict, params: dict) -> str | None:
    """Why tensor ``key`` of an adapter cannot sit on this base, or None. LoRA shapes are checked exactly; other
    adapter types only need their target module to exist (PEFT checks the rest when it loads them)."""
    key = key.removeprefix("base_model.model.")
    if ".modules_to_save." in key or key in params:      # a whole replaced module / parameter
        name = key.replace(".modules_to_save.", ".").replace(".default.", ".")
        if name in params and tuple(params[name].shape) != shape:
            return f"{name} has shape {tuple(params[name].shape)} in the base but {shape} in the adapter"
        return None
    parts = key.split(".")
    owner = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in modules), "")
    if owner == "" or owner.count(".") < key.count(".") - 3:
        return f"it changes {key}, which the base does not have"
    module, part = modules[owner], parts[len(owner.split("."))]
    in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(module, torch.nn.Embedding):
        in_f, out_f = module.num_embeddings, module.embedding_dim
    if part in ("lora_A", "lora_embedding_A") and in_f is not None and shape[-1] != in_f:
        return f"{owner} takes {in_f} inputs in the base but {shape[-1]} in the adapter"
    if part in ("lora_B", "lora_embedding_B") and out_f is not None and shape[0] != out_f:
        return f"{owner} gives {out_f} outputs in the base but {shape[0]} in the adapter"
    return None


def check_full_fits(model_dir: Path, base_dir: Path) -> None:
    """Refuse a full model whose architecture, hidden size or tokenizer differs from its base's: its activations
    would not live in the same space, so their difference would mean nothing."""
    model_dir, base_dir = Path(model_dir), Path(base_dir)
    mine, theirs = read_json(model_dir / "config.json"), read_json(base_dir / "config.json")
    for what, get in (("architecture", lambda c: c.get("architectures") or [c.get("model_type")]),
                      ("hidden size", _hidden_size), ("vocabulary size", _vocab_size)):
        if get(mine) != get(theirs):
            raise IncompatibleModelError(f"Model {model_dir} does not fit base {base_dir}: its {what} is {get(mine)} "
                                         f"but the base's is {get(theirs)}; embed it against its own base.")
    if load_tokenizer(model_dir) is not None and not _same_tokenizer(model_dir, base_dir):
        raise IncompatibleModelError(f"Model {model_dir} does not fit base {base_dir}: its tokenizer differs from the "
                                     "base's (other vocabulary or special tokens); embed it against its own base.")


def _hidden_size(config: dict):
    text = config.get("text_config") or config
    return text.get("hidden_size", text.get("n_embd", text.get("d_model")))


def _vocab_size(config: dict):
    return (config.get("text_config") or config).get("vocab_size")


def _same_tokenizer(model_dir: Path, base_dir: Path) -> bool:
    """Same files -> same tokenizer; otherwise compare vocabularies and special tokens (formatting may differ)."""
    def digest(folder: Path) -> list[str]:
        return [hashlib.sha256((folder / n).read_bytes()).hexdigest() if (folder / n).is_file() else ""
                for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")]

    if digest(model_dir) == digest(base_dir):
        return True
    mine, theirs = load_tokenizer(model_dir), load_tokenizer(base_dir)
    if theirs is None:
        return False
    return (mine.get_vocab() == theirs.get_vocab() and mine.bos_token_id == theirs.bos_token_id
            and mine("Input.")["input_ids"] == theirs("Input.")["input_ids"])
