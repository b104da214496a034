"""The one dispatch rule and its switch; the package without triton; the models, the rollout engine
and the estimators giving the same results (within tolerance) on either backend."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffrl.kernels import dispatch, get_backend, set_backend, use_backend
from tests.triton_interpret import DEVICE, HAS_TRITON, requires_triton

PACKAGE = Path(__file__).resolve().parents[1] / "diffrl"


@pytest.fixture(autouse=True)
def _fresh_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_backend", None)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def test_backend_comes_from_set_backend_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_backend() == "auto"
    monkeypatch.setenv("DIFFRL_KERNELS", "torch")
    assert get_backend() == "torch"
    set_backend("triton")
    assert get_backend() == "triton"
    with use_backend("auto"):
        assert get_backend() == "auto"
    assert get_backend() == "triton"
    set_backend(None)
    assert get_backend() == "torch"


def test_bad_backend_names_are_rejected_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"kernel backend='cuda' .* auto, torch, triton"):
        set_backend("cuda")
    monkeypatch.setenv("DIFFRL_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"DIFFRL_KERNELS='fast' .* auto, torch, triton"):
        get_backend()


def test_use_backend_restores_after_an_error() -> None:
    with pytest.raises(RuntimeError), use_backend("torch"):
        raise RuntimeError("inside")
    assert get_backend() == "auto"


def test_rule_auto_is_fallback_on_cpu_and_fp64_always_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu32, cpu64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert not dispatch.use_triton(cpu32)
    with use_backend("torch"):
        assert not dispatch.use_triton(cpu32)
    with use_backend("triton"):
        assert not dispatch.use_triton(cpu64)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1" if HAS_TRITON else "pip install"):
            dispatch.use_triton(cpu32)


def test_only_the_kernel_modules_import_triton() -> None:
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import triton|from triton)", path.read_text(), flags=re.M)
    }
    assert importers and all(re.fullmatch(r"kernels/\w+\.py", p) for p in importers), importers
    top_level = {p for p in importers if re.search(r"^(import triton|from triton)", (PACKAGE / p).read_text(), flags=re.M)}
    assert all(p.endswith("_triton.py") for p in top_level), top_level


WITHOUT_TRITON = textwrap.dedent(
    """
    import sys, torch

    class NoTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError("triton is not installed here")

    sys.meta_path.insert(0, NoTriton())
    from diffrl.algorithms.estimators import OneStepMeanField
    from diffrl.algorithms import PolicyBatch
    from diffrl.kernels import selected_logprobs, set_backend
    from diffrl.models import load_pretrained
    from diffrl.rollout import RolloutConfig, generate

    model = load_pretrained(sys.argv[1], dtype=torch.float32)
    prompts = torch.randint(0, 400, (2, 4))
    mask = torch.ones_like(prompts, dtype=torch.bool)
    out = generate(model, prompts, mask, RolloutConfig(max_completion_length=8, block_length=8, steps=4, temperature=1.0))
    scores = OneStepMeanField()(model, PolicyBatch.from_rollout(out), seed=0)
    scores.logp.sum().backward()
    set_backend("triton")
    try:
        selected_logprobs(torch.zeros(1, 4), torch.zeros(3, 4), torch.zeros(1, dtype=torch.long))
    except RuntimeError as err:
        print("forced:", err)
    print("ok", "triton" in sys.modules)
    """
)


def test_package_imports_and_trains_without_triton(tiny_llada_dir: Path) -> None:
    """With triton unimportable, the rollout, the estimator and its backward run on the fallbacks;
    forcing the Triton backend then says how to install it."""
    out = subprocess.run([sys.executable, "-c", WITHOUT_TRITON, str(tiny_llada_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "forced: kernel backend 'triton' needs triton: pip install" in out.stdout
    assert out.stdout.strip().endswith("ok False")


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_switching_backends_changes_the_model_only_within_tolerance(tiny_llada_dir: Path, dtype: torch.dtype) -> None:
    """A tiny LLaDA run end to end on each backend: the hidden states, a sampled rollout (same
    tokens, close confidences and log-probs) and the estimator's log-probs and gradients."""
    from diffrl.algorithms import PolicyBatch
    from diffrl.algorithms.estimators import OneStepMeanField
    from diffrl.models import load_pretrained
    from diffrl.rollout import RolloutConfig, generate

    model = load_pretrained(tiny_llada_dir, dtype=dtype).to(DEVICE)
    prompts = torch.randint(0, 400, (2, 5), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones_like(prompts, dtype=torch.bool)
    mask[0, :2] = False
    cfg = RolloutConfig(max_completion_length=8, block_length=4, steps=4, temperature=0.9, stop_at_eos=False)
    runs = {}
    for backend in ("torch", "triton"):
        with use_backend(backend), torch.no_grad():
            runs[backend] = (model(prompts, mask), generate(model, prompts, mask, cfg))
    batch = PolicyBatch.from_rollout(runs["torch"][1])  # both backends score the same completions
    for backend in ("torch", "triton"):
        with use_backend(backend):
            scores = OneStepMeanField(p_mask_prompt=0.3)(model, batch, seed=3)
            model.zero_grad()
            (scores.logp.sum() + 0.1 * scores.entropy.sum()).backward()
        runs[backend] += (scores.logp.detach(), {name: p.grad.float() for name, p in model.named_parameters()})
    (h0, r0, lp0, g0), (h1, r1, lp1, g1) = runs["torch"], runs["triton"]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.allclose(h1.float(), h0.float(), atol=tol * h0.float().abs().max().item())
    assert torch.allclose(lp1, lp0, atol=tol * lp0.abs().max().item())
    for name, grad in g0.items():
        assert torch.allclose(g1[name], grad, atol=tol * grad.abs().max().item() + 1e-7), name
    if dtype == torch.float32:  # bf16 rounding may flip near-tied choices; fp32 must not
        assert torch.equal(r1.completion_ids, r0.completion_ids) and torch.equal(r1.step_map, r0.step_map)
        assert torch.allclose(r1.confidence, r0.confidence, atol=1e-4) and torch.allclose(r1.logprob, r0.logprob, atol=1e-4)


def test_importing_the_package_leaves_triton_unimported() -> None:
    """Triton fixes compile-or-interpret when first imported, so importing diffrl (the rollout's
    compile support imports torch._dynamo, which imports triton) must not import it first."""
    code = "import sys, diffrl, diffrl.rollout, diffrl.trainer, diffrl.eval, diffrl.algorithms; print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
