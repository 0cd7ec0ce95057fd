"""Execution engines of the frozen modules: ONNX Runtime, frozen TorchScript or eager torch.

At the embedded detector's size (64x64 frames, an 8x8 memory) a module's cost is mostly
per-operator overhead, not arithmetic. ONNX Runtime runs the same graphs with far less
of it: on this 2-core machine, one thread, batch one, the light extractor takes about 0.2 ms
against 1.6-4 ms in torch, the ConvLSTM step 0.08 ms against 0.5 ms (``python
benchmarks/backbones.py`` prints the table for every engine, measured in one run).

:func:`compile_module` turns a frozen module into a callable with the module's calling
convention (tensors in, a tensor or a tuple of tensors out) on one of :data:`ENGINES`:

* ``onnxruntime``: the module is exported once with ``torch.onnx.export`` (opset
  :data:`ONNX_OPSET`, a dynamic batch axis) and run in an ``onnxruntime.InferenceSession``
  with ``threads`` intra-op threads (one by default). ``InferenceSession.run`` releases the
  GIL, so a heavy extractor in a background thread (the runtime's asynchronous mode) does not
  take turns with the main thread, as a frozen TorchScript graph does not either;
* ``torchscript``: traced and frozen (``torch.jit.freeze`` folds every BatchNorm into its
  convolution), on torch's threads;
* ``eager``: the module itself.

**Export cache.** An export is keyed by the sha256 of the module's weights (its ``state_dict``:
names, shapes, dtypes and bytes, :func:`weights_sha256`) together with what else shapes the
graph (module class and configuration, per-sample input shapes, opset, this file's export
version). It is written atomically as ``KIND-KEY.onnx`` with a JSON sidecar ``KIND-KEY.json``
in :func:`engine_cache_dir` (``$GISTGYM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/gistgym/engines``,
else ``~/.cache/gistgym/engines``; a run can point the variable at a folder next to it).
Before an export is written it must reproduce the eager module to :data:`PARITY_ATOL` on the
caller's example inputs, at their batch size and at batch 3. A cached export is reused only
when its sidecar is readable, of this export version, and the ONNX bytes match the sidecar's
``onnx_sha256``; otherwise it is stale or corrupt and rebuilt. A sidecar that records other
weights than the key's (a file copied under another name) is refused with
:class:`ExportMismatchError`: it is never used, and never silently replaced either.

**The environment's step** (:class:`BatchedMemoryHead`): the Interleave environments run the
frozen memory and head on ``N * m`` rows per step; the fused ``(x, c, h) -> (c', h', loc,
conf)`` graph runs on ONNX Runtime from :data:`ONNX_MIN_ROWS` rows up, where it was measured
faster than torch (``python benchmarks/envs.py``), and in torch below.

**Cache building** (:func:`use_build_engine`): the build's per-frame extractors run on
:data:`BUILD_ENGINE` (``$GISTGYM_BUILD_ENGINE=onnxruntime`` for ONNX Runtime); FLOP counting
and the stored modules stay torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gistgym.backbones.convlstm import LSTMState
from gistgym.errors import ConfigError, InputFileError

ENGINES = ("onnxruntime", "torchscript", "eager")
"""Engine names, the default first."""
DEFAULT_ENGINE = "onnxruntime"
"""The engine the runtime uses unless told otherwise (its parity tests: ``tests/test_engines.py``)."""
ONNX_OPSET = 17
"""Opset of every module export."""
EXPORT_FORMAT = "gistgym-engine-export"
EXPORT_VERSION = 1
"""Bumped whenever the export procedure changes: older cached exports are then rebuilt."""
PARITY_ATOL = 1e-4
"""Largest absolute difference to the eager module an engine's outputs may show."""
CACHE_ENV = "GISTGYM_ENGINE_CACHE"
"""Environment variable naming the export cache folder."""
WARMUP_CALLS = 3
"""Calls of each compiled module at build time (TorchScript's executor profiles its first calls)."""
ONNX_MIN_ROWS = 1
"""Rows from which the environment's memory + head step runs on ONNX Runtime (measured at 2..128 rows:
ONNX Runtime was 1.5-6x faster than eager torch at every size, see ``benchmarks/envs.py``)."""
BUILD_ENGINE = "eager"
"""Engine of the cache build's per-frame extractors; :data:`BUILD_ENGINE_ENV` overrides it.
ONNX Runtime is faster at the build's batch of 256 frames (``benchmarks/cache.py`` measures both),
but its features differ from eager torch's by ~1e-6, which flips the float16 rounding of a few
cached values: a cache would no longer equal the evaluation's eager features bit for bit (what
``tests/test_feature_cache.py`` asserts). Eager stays the default until that contract changes."""
BUILD_ENGINE_ENV = "GISTGYM_BUILD_ENGINE"
"""Environment variable naming the cache build's engine (read by every build process, workers included)."""


class EngineError(ConfigError):
    """An engine cannot run: unknown name, bad thread count, onnxruntime missing, an export failing."""


class ExportMismatchError(InputFileError):
    """A cached export's sidecar records weights other than the ones it is looked up for."""


Compiled = Callable[..., Any]
"""A compiled module: the module's calling convention (tensors in, a tensor or a tuple of tensors out)."""


# --- arguments ------------------------------------------------------------------------------------
def check_engine(engine: object) -> str:
    """``engine`` if it names one of :data:`ENGINES`.

    Raises:
        EngineError: It does not.
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise EngineError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def check_threads(threads: object) -> int:
    """``threads`` if it is an integer >= 1.

    Raises:
        EngineError: It is not.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EngineError(f"--threads must be an integer >= 1, got {threads!r}")
    return threads


def engine_cache_dir() -> Path:
    """The export cache folder: ``$GISTGYM_ENGINE_CACHE``, else the user cache folder's ``gistgym/engines``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gistgym" / "engines"


def weights_sha256(module: nn.Module) -> str:
    """sha256 over a module's ``state_dict`` (names, shapes, dtypes, bytes), in key order."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(k.encode() + b"\0" + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except Exception as exc:  # ImportError, or a shared library that fails to load (OSError)
        raise EngineError(
            f"onnxruntime is missing or fails to load ({type(exc).__name__}: {exc}); install it with "
            "`pip install onnxruntime`, or pass --engine torchscript"
        ) from exc
    return ort


# --- TorchScript ----------------------------------------------------------------------------------
def freeze_torchscript(module: nn.Module, *example: Tensor) -> torch.jit.ScriptModule:
    """``module`` traced on ``example`` and frozen (BatchNorm folded, weights inlined), warmed up."""
    with warnings.catch_warnings(), torch.no_grad():
        # tracing warns about Python numbers (the input scale, the groups) becoming constants,
        # which is exactly what is wanted for a fixed input signature
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        # TorchScript's executor profiles and optimises a graph on its first calls (tens of ms):
        # do that here, not on the first frames of a video, whose latency would show it
        for _ in range(WARMUP_CALLS):
            frozen(*example)
    return frozen


# --- ONNX export and its cache --------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxExport:
    """One module's ONNX export (from the cache or made now)."""

    kind: str
    data: bytes
    """The ONNX model bytes."""
    sidecar: dict[str, Any]
    path: Path | None
    """Where it is cached (``None`` if the cache folder could not be written)."""
    status: str
    """``cached``, ``exported``, or ``rebuilt (REASON)``."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _export_key(module: nn.Module, example: Sequence[Tensor], kind: str, weights: str) -> str:
    identity = {
        "kind": kind,
        "weights_sha256": weights,
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": repr(getattr(module, "config", None)),
        "module": repr(module),
        "input_shapes": [list(x.shape[1:]) for x in example],
        "opset": ONNX_OPSET,
        "export_version": EXPORT_VERSION,
    }
    return _sha256(json.dumps(identity, sort_keys=True).encode())


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def _export_bytes(
    module: nn.Module, example: Sequence[Tensor], kind: str, input_names: Sequence[str], output_names: Sequence[str]
) -> bytes:
    names = [*input_names, *output_names]
    buffer = io.BytesIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                tuple(example),
                buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to file objects too
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={n: {0: "batch"} for n in names},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types (unsupported ops, tracing errors)
        raise EngineError(f"exporting the {kind} module to ONNX failed: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def _parity_inputs(example: Sequence[Tensor]) -> list[tuple[Tensor, ...]]:
    """The examples as given, and at batch 3 (rows scaled differently, to exercise the dynamic batch axis)."""
    scales = torch.tensor([1.0, 0.5, 1.5])
    batch3 = tuple(
        torch.cat([x[:1] * s for s in scales]) if x.is_floating_point() else x[:1].repeat(3, *[1] * (x.dim() - 1))
        for x in example
    )
    return [tuple(example), batch3]


def _check_parity(module: nn.Module, compiled: Compiled, example: Sequence[Tensor], kind: str, engine: str) -> float:
    worst = 0.0
    with torch.inference_mode():
        for inputs in _parity_inputs(example):
            want = _as_tuple(module(*inputs))
            got = _as_tuple(compiled(*inputs))
            if len(want) != len(got):
                raise EngineError(f"the {engine} {kind} module returns {len(got)} outputs, the eager one {len(want)}")
            for a, b in zip(want, got, strict=True):
                if tuple(a.shape) != tuple(b.shape):
                    raise EngineError(
                        f"the {engine} {kind} module returns shape {tuple(b.shape)}, the eager one {tuple(a.shape)}"
                    )
                worst = max(worst, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    if not worst <= PARITY_ATOL:
        raise EngineError(
            f"the {engine} {kind} module differs from the eager one by {worst:.3g} (> {PARITY_ATOL:g}); "
            "pass --engine eager (and report it)"
        )
    return worst


def _read_cached(path: Path, weights: str) -> tuple[bytes, dict[str, Any]] | str:
    """The cached export's bytes and sidecar, or why it cannot be used (stale or corrupt: rebuild it).

    Raises:
        ExportMismatchError: The sidecar records other weights.
    """
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return "missing"
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable sidecar: {exc}"
    if not isinstance(sidecar, dict) or sidecar.get("format") != EXPORT_FORMAT:
        return "not a gistgym engine export"
    if sidecar.get("format_version") != EXPORT_VERSION:
        return f"export version {sidecar.get('format_version')!r}, this gistgym makes {EXPORT_VERSION}"
    if sidecar.get("weights_sha256") != weights:
        raise ExportMismatchError(
            path,
            f"cached export records weights sha256 {str(sidecar.get('weights_sha256'))[:12]}... but is looked up for "
            f"weights {weights[:12]}...; delete it (or the folder {path.parent}) to export again",
            field="weights_sha256",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc}"
    if _sha256(data) != sidecar.get("onnx_sha256"):
        return "ONNX bytes differ from the sidecar's onnx_sha256 (truncated or modified)"
    return data, sidecar


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def onnx_export(
    module: nn.Module,
    example: Sequence[Tensor],
    *,
    kind: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    cache_dir: Path | None = None,
) -> OnnxExport:
    """The ONNX export of ``module`` from the cache, or exported, checked against eager and cached now.

    Args:
        module: A frozen module (eval mode).
        example: Example inputs (batch axis first); they also serve the parity check.
        kind: Short name of the module (file names and messages), e.g. ``extractor-heavy``.
        input_names: Graph input names, one per example.
        output_names: Graph output names, one per output.
        cache_dir: Export cache folder (default :func:`engine_cache_dir`).

    Raises:
        EngineError: onnxruntime missing, the export failing, or its outputs differing from eager.
        ExportMismatchError: A cached export under this key records other weights.
    """
    weights = weights_sha256(module)
    key = _export_key(module, example, kind, weights)
    folder = cache_dir if cache_dir is not None else engine_cache_dir()
    path = folder / f"{kind}-{key[:24]}.onnx"
    cached = _read_cached(path, weights)
    if not isinstance(cached, str):
        data, sidecar = cached
        return OnnxExport(kind, data, sidecar, path, "cached")
    data = _export_bytes(module, example, kind, input_names, output_names)
    session = ort_session(data, 1, kind)
    worst = _check_parity(module, OrtModule(session, input_names, output_names), example, kind, "onnxruntime")
    sidecar = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "kind": kind,
        "weights_sha256": weights,
        "key": key,
        "onnx_sha256": _sha256(data),
        "opset": ONNX_OPSET,
        "input_names": list(input_names),
        "output_names": list(output_names),
        "input_shapes": [list(x.shape[1:]) for x in example],
        "parity_max_abs": worst,
        "torch": torch.__version__,
    }
    status = "exported" if cached == "missing" else f"rebuilt ({cached})"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        _write_atomic(path.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
    except OSError as exc:  # a read-only home: run from memory, export again next time
        return OnnxExport(kind, data, sidecar, None, f"{status}, not cached ({exc})")
    return OnnxExport(kind, data, sidecar, path, status)


_SESSIONS: dict[tuple[str, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def ort_session(data: bytes, threads: int, kind: str) -> Any:
    """An ``onnxruntime.InferenceSession`` of ONNX bytes on the CPU with ``threads`` intra-op threads.

    Sessions are kept per process (per model bytes and thread count): building one costs
    milliseconds, and every environment and runtime of a process shares them (``run`` is thread-safe).

    Raises:
        EngineError: onnxruntime is missing or cannot load the model.
    """
    key = (_sha256(data), threads)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EngineError(f"onnxruntime cannot load the {kind} export: {type(exc).__name__}: {exc}") from exc
    with _SESSIONS_LOCK:
        return _SESSIONS.setdefault(key, session)


class OrtModule:
    """An ONNX Runtime session with a torch module's calling convention.

    Inputs are float32 tensors (converted to numpy without a copy when contiguous); outputs
    come back as tensors sharing the session's output buffers. ``run`` releases the GIL.
    """

    def __init__(
        self, session: Any, input_names: Sequence[str], output_names: Sequence[str], export: OnnxExport | None = None
    ) -> None:
        self.session = session
        self.input_names = tuple(input_names)
        self.output_names = list(output_names)
        self.export = export

    def __call__(self, *inputs: Tensor) -> Any:
        """The session's outputs for ``inputs``: one tensor, or a tuple of them."""
        feed = {
            name: np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        outs = self.session.run(self.output_names, feed)
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    def run_arrays(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """The session's outputs for C-contiguous float32 arrays, as a tuple of arrays (no tensors, no copies).

        The online runtime's per-frame path: at batch one the tensor <-> array conversions of
        :meth:`__call__` are a noticeable share of a light module's few hundred microseconds.
        """
        return tuple(self.session.run(self.output_names, dict(zip(self.input_names, inputs, strict=True))))


def compile_module(
    module: nn.Module,
    example: Sequence[Tensor],
    *,
    engine: str,
    kind: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    threads: int = 1,
    cache_dir: Path | None = None,
) -> Compiled:
    """``module`` on ``engine`` (see the module docstring), with the module's calling convention.

    Args:
        module: A frozen module (eval mode).
        example: Example inputs with the batch axis first.
        engine: One of :data:`ENGINES`.
        kind: Short name (export file names and messages).
        input_names: ONNX graph input names, one per example input.
        output_names: ONNX graph output names, one per output.
        threads: ONNX Runtime intra-op threads (TorchScript and eager use torch's threads).
        cache_dir: Export cache folder (default :func:`engine_cache_dir`).

    Raises:
        EngineError: Unknown engine, bad ``threads``, onnxruntime missing, an export failing.
        ExportMismatchError: A cached export that records other weights.
    """
    check_engine(engine)
    check_threads(threads)
    if module.training:
        raise EngineError(f"the {kind} module is in training mode; call .eval() before compiling it")
    if engine == "eager":
        return module
    if engine == "torchscript":
        return freeze_torchscript(module, *example)
    export = onnx_export(
        module, example, kind=kind, input_names=input_names, output_names=output_names, cache_dir=cache_dir
    )
    compiled = OrtModule(ort_session(export.data, threads, kind), input_names, output_names, export)
    with torch.inference_mode():
        for _ in range(WARMUP_CALLS):
            compiled(*example)
    return compiled


def check_parity(module: nn.Module, compiled: Compiled, example: Sequence[Tensor], *, kind: str, engine: str) -> float:
    """Largest absolute difference between ``compiled`` and ``module`` on ``example`` (and at batch 3).

    Raises:
        EngineError: Above :data:`PARITY_ATOL`, or other output shapes.
    """
    return _check_parity(module, compiled, example, kind, engine)


# --- the environment's batched memory + head ------------------------------------------------------
class MemoryHeadStep(nn.Module):
    """The ConvLSTM step and the head in one graph: ``(x, c, h) -> (c', h', loc, conf)``."""

    def __init__(self, memory: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.memory = memory
        self.head = head

    def forward(self, x: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c', h', loc, conf)`` of one memory step from ``(c, h)`` on features ``x`` and the head on its output."""
        out, new = self.memory(x, LSTMState(c, h))
        loc, conf = self.head(out)
        return new.c, new.h, loc, conf


STEP_ENGINES = ("auto", *ENGINES)
"""Engines of :class:`BatchedMemoryHead`: ``auto`` picks per batch size (:data:`ONNX_MIN_ROWS`)."""


class BatchedMemoryHead:
    """The frozen memory and head of the Interleave environments on the faster engine per batch size.

    Args:
        memory: The frozen ConvLSTM.
        head: The frozen SSDLite head.
        grid: Spatial size of the memory.
        engine: ``auto`` (ONNX Runtime from :data:`ONNX_MIN_ROWS` rows, if it loads; torch
            below), or one of :data:`ENGINES` for every batch size.
        threads: ONNX Runtime intra-op threads.

    The ONNX Runtime graph is built on first use (an export from the cache, or made then).
    """

    def __init__(
        self, memory: nn.Module, head: nn.Module, *, grid: int, engine: str = "auto", threads: int = 1
    ) -> None:
        self.step_module = MemoryHeadStep(memory, head).eval()
        self.memory = memory
        self.grid = int(grid)
        self.threads = check_threads(threads)
        self.engine = self._check(engine)
        self._compiled: dict[str, Compiled] = {}

    @staticmethod
    def _check(engine: str) -> str:
        if engine not in STEP_ENGINES:
            raise EngineError(f"the step engine must be one of {', '.join(STEP_ENGINES)}, got {engine!r}")
        return engine

    def set_engine(self, engine: str) -> None:
        """Use ``engine`` from the next call on (``auto`` or one of :data:`ENGINES`)."""
        self.engine = self._check(engine)

    def engine_for(self, rows: int) -> str:
        """The engine a batch of ``rows`` rows runs on."""
        if self.engine != "auto":
            return self.engine
        if rows < ONNX_MIN_ROWS or "onnxruntime-unavailable" in self._compiled:
            return "eager"
        return "onnxruntime"

    def _example(self) -> tuple[Tensor, Tensor, Tensor]:
        channels, hidden = int(self.memory.in_channels), int(self.memory.hidden_channels)  # type: ignore[arg-type]
        g = self.grid
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(2, channels, g, g, generator=gen) * 6
        c = torch.rand(2, hidden, g, g, generator=gen) * 6
        h = torch.rand(2, hidden, g, g, generator=gen) * 6
        return x, c, h

    def _get(self, engine: str) -> Compiled:
        if engine not in self._compiled:
            try:
                self._compiled[engine] = compile_module(
                    self.step_module,
                    self._example(),
                    engine=engine,
                    kind="memory-head",
                    input_names=("x", "c", "h"),
                    output_names=("c_new", "h_new", "loc", "conf"),
                    threads=self.threads,
                )
            except EngineError:
                if self.engine != "auto":
                    raise
                # auto: a machine without a working onnxruntime steps in torch
                self._compiled["onnxruntime-unavailable"] = self.step_module
                return self.step_module
        return self._compiled[engine]

    def __call__(self, x: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c', h', loc, conf)`` of the rows ``(x, c, h)``."""
        engine = self.engine_for(len(x))
        if engine == "eager":
            out: tuple[Tensor, Tensor, Tensor, Tensor] = self.step_module(x, c, h)
            return out
        result: tuple[Tensor, Tensor, Tensor, Tensor] = self._get(engine)(x, c, h)
        return result


# --- the cache build's extractors -----------------------------------------------------------------
_BUILD_EXTRACTORS: weakref.WeakKeyDictionary[nn.Module, tuple[Compiled | None, ...]] = weakref.WeakKeyDictionary()


def use_build_engine(detector: Any, engine: str | None = None, *, threads: int = 1) -> Any:
    """Make :func:`~gistgym.backbones.detector.extract_video_features` run ``detector``'s extractors on ``engine``.

    Only the per-frame features of a build go through the compiled extractors; FLOP
    counting, latency measurement and the stored modules keep the torch modules. Extractors
    with temporal-shift buffers stay eager (they run through a video in runs of consecutive
    frames, batched like the others). Returns ``detector``.

    Args:
        detector: The build's interleaved detector (eval mode).
        engine: One of :data:`ENGINES` (``eager`` removes a registration); default
            ``$GISTGYM_BUILD_ENGINE``, else :data:`BUILD_ENGINE`.
        threads: ONNX Runtime intra-op threads.

    Raises:
        EngineError, ExportMismatchError: As :func:`compile_module`.
    """
    engine = engine or os.environ.get(BUILD_ENGINE_ENV) or BUILD_ENGINE
    check_engine(engine)
    if engine == "eager":
        _BUILD_EXTRACTORS.pop(detector, None)
        return detector
    size = detector.config.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2
    compiled = compile_extractors(detector, example, engine=engine, threads=threads)
    _BUILD_EXTRACTORS[detector] = compiled
    return detector


def compile_extractors(detector: Any, example: Tensor, *, engine: str, threads: int = 1) -> tuple[Compiled | None, ...]:
    """Each extractor of an interleaved detector on ``engine`` (:func:`compile_module`), in action order.

    ``None`` for an extractor with a temporal-shift buffer: its state stays with the caller,
    which runs it eagerly. ``example``: (B, 3, S, S) preprocessed images.

    Raises:
        EngineError, ExportMismatchError: As :func:`compile_module`.
    """
    compiled: list[Compiled | None] = []
    for index, name in enumerate(detector.extractor_names):
        extractor = detector.extractor(index)
        compiled.append(
            None
            if extractor.uses_shift
            else compile_module(
                extractor,
                (example,),
                engine=engine,
                kind=f"extractor-{_safe(name)}",
                input_names=("images",),
                output_names=("features",),
                threads=threads,
            )
        )
    return tuple(compiled)


class ShiftExtractorStep(nn.Module):
    """A temporal-shift extractor's frame with its buffers as plain inputs and outputs.

    ``(images, *buffers) -> (features, *buffers')``, one (B, fold, h, w) buffer per shifting
    block (:meth:`FeatureExtractor.forward_with_shift
    <gistgym.backbones.detector.FeatureExtractor.forward_with_shift>`); a stream's first frame
    passes zeros, which is what a missing buffer means. Plain tensors in and out are what
    tracing and export need.
    """

    def __init__(self, extractor: Any) -> None:
        super().__init__()
        self.extractor = extractor  # a FeatureExtractor (gistgym.backbones.detector imports this module)

    def forward(self, images: Tensor, *buffers: Tensor) -> tuple[Tensor, ...]:
        """Features and the buffers for the next frame."""
        feats, new = self.extractor.forward_with_shift(images, tuple(buffers))
        return (feats, *new)

    @torch.no_grad()
    def zero_buffers(self, images: Tensor) -> tuple[Tensor, ...]:
        """Zero buffers of the shapes ``images`` (a stream's first frames) leave behind."""
        return tuple(torch.zeros_like(b) for b in self.extractor.forward_with_shift(images, None)[1])


def compile_shift_steps(
    detector: Any, example: Tensor, *, engine: str, threads: int = 1
) -> tuple[Compiled | None, ...]:
    """Each temporal-shift extractor of an interleaved detector as a :class:`ShiftExtractorStep` on ``engine``.

    ``None`` for an extractor without shift, and for every extractor on ``eager`` (the caller
    runs the module with its buffers itself). ``example``: (B, 3, S, S) preprocessed images.

    Raises:
        EngineError, ExportMismatchError: As :func:`compile_module`.
    """
    out: list[Compiled | None] = []
    for index, name in enumerate(detector.extractor_names):
        extractor = detector.extractor(index)
        if not extractor.uses_shift or engine == "eager":
            out.append(None)
            continue
        step = ShiftExtractorStep(extractor).eval()
        buffers = step.zero_buffers(example)
        names = [f"shift_{k}" for k in range(len(buffers))]
        out.append(
            compile_module(
                step,
                (example, *(b + 0.5 for b in buffers)),  # a non-zero past: zeros would hide a dropped buffer
                engine=engine,
                kind=f"shift-step-{_safe(name)}",
                input_names=("images", *names),
                output_names=("features", *(f"{n}_out" for n in names)),
                threads=threads,
            )
        )
    return tuple(out)


def build_extractor(detector: nn.Module, index: int) -> Compiled | None:
    """The compiled extractor :func:`use_build_engine` registered for ``detector``, or ``None``."""
    compiled = _BUILD_EXTRACTORS.get(detector)
    return None if compiled is None else compiled[index]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
