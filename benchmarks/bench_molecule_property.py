"""EDM's property-conditioning protocol (Hoogeboom et al. 2022, section 5.2 / table 3) on our molecules.

1. Split the data (the bundled QM9 subset by default, ``--data qm9`` for all of QM9's training
   split when qm9pack is installed) with a fixed seed into a held-out test part (``--test``
   molecules) and the rest, which is halved into A and B, as EDM halves its training split.
2. Train the property predictor (an E(3)-invariant EGNN regressor, ``property.PropertyPredictor``)
   on half A only.
3. Train a conditional diffusion model on half B only (``--condition property:NAME``;
   normalised with B's own mean / std; condition dropout 0.1 as everywhere).
4. Generate one molecule at the property value *and* atom count of each held-out test molecule
   (conditional, guidance scale ``--guidance`` = 1 by default, i.e. plain conditional sampling
   as in EDM), and the same atom counts with the null condition (unconditional samples of the
   same model).
5. Report the predictor's MAE against the targets on: the conditional samples; EDM's baselines
   -- '#Atoms' (the property predicted from the atom count alone, fit on A), 'shuffled' (the
   predictor on real test molecules against shuffled targets, the upper bound), 'real' (the
   predictor on the real test molecules, the lower bound) -- and the unconditional samples.
   The scoring predictor never sees B or the test part; the generator never sees A or test.

    PYTHONPATH=... python benchmarks/bench_molecule_property.py --property alpha --steps 1500 \\
        --predictor-steps 1500 --out /tmp/bench_props.json

Prints a table with the training budget and EDM's published figures (alpha, Bohr^3) beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import diffuse.api as api
from diffuse.core.process.build import build_process
from diffuse.core.data.registry import get_domain
from diffuse.core.errors import UserInputError
from diffuse.core.training.trainer import Trainer
from diffuse.core.data.domain import Batch
from diffuse.core.data.product import State
from diffuse.domains.molecules.bonded_metrics import bonded_metrics
from diffuse.domains.molecules.chem import validity_table
from diffuse.domains.molecules.dataset import FeatureCodec
from diffuse.domains.molecules.domain import analyze_samples
from diffuse.domains.molecules.property import atoms_only_baseline, predict, train_predictor

#: EDM table 3 (MAE; alpha in Bohr^3, gap/homo/lumo in meV, mu in D, Cv in cal/mol K)
EDM_TABLE = {
    "alpha": {"conditioned": 2.76, "#atoms": 3.86, "shuffled": 9.01, "real": 0.10},
    "gap": {"conditioned": 655, "#atoms": 866, "shuffled": 1470, "real": 64},
    "homo": {"conditioned": 356, "#atoms": 426, "shuffled": 645, "real": 39},
    "lumo": {"conditioned": 584, "#atoms": 813, "shuffled": 1457, "real": 36},
    "mu": {"conditioned": 1.111, "#atoms": 1.053, "shuffled": 1.613, "real": 0.043},
    "Cv": {"conditioned": 1.065, "#atoms": 1.971, "shuffled": 6.857, "real": 0.040},
}


def as_atoms(samples: Batch, atoms_data) -> Batch:
    """Samples as the predictor reads them: ``[positions, element features]`` of the bond-free
    representation (a bond-generating model's coordinates and element types; its generated bonds
    and charges are not the predictor's input, as EDM's predictor sees no bonds)."""
    if not isinstance(samples.x, State):
        return samples
    codec = FeatureCodec.from_info(atoms_data.info())
    return Batch(codec.encode(samples.x["pos"].float(), samples.x["atoms"]), samples.space["pos"])


def stability(samples: Batch, info: dict) -> dict:
    """Atom / molecule stability and validity: EDM's rule for a bond-free model; both protocols
    (bonds generated, and ``edm/...`` keys) for a bond-generating one."""
    if isinstance(samples.x, State):
        return bonded_metrics(samples, info)[0]
    return validity_table(analyze_samples(samples, info)[1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--property", default="alpha")
    ap.add_argument("--data", default=None, help="molecule data (default: the bundled QM9 subset)")
    ap.add_argument("--test", type=int, default=200, help="held-out molecules to generate at")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="small", help="EGNN preset of the diffusion model")
    ap.add_argument("--recipe", default=None,
                    help="the generator's recipe instead of the bond-free EGNN (e.g. recipes/molecules-bonds.json: "
                         "atoms, charges and bonds generated; the predictor still reads coordinates and elements)")
    ap.add_argument("--steps", type=int, default=1500, help="diffusion training steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--predictor-steps", type=int, default=1500)
    ap.add_argument("--sampler", default=None, help="default: ddim; with --recipe the model's own default")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG scale (1 = plain conditional, as EDM)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run-dir", default=None, help="where the diffusion run goes (default: a temp folder)")
    ap.add_argument("--out", default=None,
                    help="results JSON (default benchmarks/results/molecule_property_<property>.json)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()

    dom = get_domain("molecules")
    cond_opts = dom.condition_data_options([f"property:{args.property}"])
    prop = cond_opts["properties"][0]
    full = dom.load_data(args.data, {**dom.default_data(), **cond_opts})
    n = len(full)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    test_idx, rest = perm[:args.test], perm[args.test:]
    half = len(rest) // 2
    a_idx, b_idx = rest[:half], rest[half:]
    col = full.property_names.index(prop)
    y = full.properties[:, col].numpy()
    counts = full.counts.numpy()
    log(f"{n} molecules: A {len(a_idx)} (predictor), B {len(b_idx)} (generator), test {len(test_idx)}")

    # -- the property predictor, on A only
    ds_a = full.take(a_idx)
    t_pred = time.time()
    predictor = train_predictor(ds_a, [prop], steps=args.predictor_steps, batch_size=args.batch_size,
                                seed=args.seed, log=log)
    t_pred = time.time() - t_pred
    ds_test = full.take(test_idx)
    target = y[test_idx.numpy()]
    pred_real = predict(predictor, ds_test.batch(torch.arange(len(ds_test))))[:, 0].double().numpy()
    mae_real = float(np.abs(pred_real - target).mean())
    shuffled = target[np.random.default_rng(args.seed).permutation(len(target))]
    mae_shuffled = float(np.abs(pred_real - shuffled).mean())
    atoms_pred = atoms_only_baseline(counts[a_idx.numpy()], y[a_idx.numpy()], counts[test_idx.numpy()])
    mae_atoms = float(np.abs(atoms_pred - target).mean())
    log(f"predictor ({t_pred:.0f} s): MAE real {mae_real:.3f}, shuffled {mae_shuffled:.3f}, #atoms {mae_atoms:.3f}")

    # -- the conditional diffusion model, on B only (normalised with B's statistics)
    try:
        recipe = api.read_config_file(args.recipe) if args.recipe else {"model": {"preset": args.preset}}
    except UserInputError as err:
        ap.error(str(err))
    if args.sampler is None and not args.recipe:
        args.sampler = "ddim"
    gen_data = full
    if args.recipe:   # the same molecules in the recipe's representation (bonds, charges): indices must agree
        gen_data = dom.load_data(args.data, {**dom.default_data(), **recipe.get("data_options", {}), **cond_opts})
        if len(gen_data) != n or not torch.equal(gen_data.counts, full.counts) or not torch.equal(gen_data.types, full.types):
            raise SystemExit("error: the recipe's data does not list the same molecules in the same order")
    ds_b = gen_data.take(b_idx)
    ds_b.with_properties(ds_b.properties.numpy(), ds_b.property_names, ds_b.condition_properties)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bench_props_")) / "run"
    cfg = api.make_config(dom, data=args.data, config={k: v for k, v in recipe.items() if k not in ("train", "data")},
                          conditions=[f"property:{prop}"], steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          warmup_steps=min(100, args.steps // 10), checkpoint_every=0, eval_samples=0,
                          device=args.device, seed=args.seed, log_every=100)
    cfg.data_info = ds_b.info()
    dom = dom.bind(cfg.data_info)
    torch.manual_seed(args.seed)
    diff = build_process(cfg.diffusion, cfg.data_info)
    denoiser = diff.denoiser(dom.build_backbone(cfg.model))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    t_train = time.time()
    Trainer(run_dir, cfg, dom, diff, denoiser, ds_b, None, progress=False).fit()
    t_train = time.time() - t_train
    log(f"diffusion model: {args.steps} steps in {t_train:.0f} s")

    # -- generation at the held-out molecules' properties and atom counts
    model = api.load(run_dir, device=args.device)
    structure = torch.as_tensor(counts[test_idx.numpy()])
    t_sample = time.time()
    guided = None if args.guidance == 1.0 else args.guidance
    samples = model.sample(len(test_idx), sampler=args.sampler, steps=args.sample_steps, seed=args.seed + 1,
                           cond={"property": {prop: target.tolist()}}, structure=structure, guidance_scale=guided)
    uncond = model.sample(len(test_idx), sampler=args.sampler, steps=args.sample_steps, seed=args.seed + 1,
                          structure=structure)
    t_sample = time.time() - t_sample
    pred_cond = predict(predictor, as_atoms(samples, full))[:, 0].double().numpy()
    pred_uncond = predict(predictor, as_atoms(uncond, full))[:, 0].double().numpy()
    mae_cond = float(np.abs(pred_cond - target).mean())
    mae_uncond = float(np.abs(pred_uncond - target).mean())
    stab_cond, stab_uncond = (stability(s, model.data_info) for s in (samples, uncond))
    corr = float(np.corrcoef(pred_cond, target)[0, 1])

    unit = model.data_info.get("property_units", {}).get(prop, "")
    edm = EDM_TABLE.get(prop, {})
    rows = [("conditioned samples", mae_cond, edm.get("conditioned")),
            ("#atoms (property from N only)", mae_atoms, edm.get("#atoms")),
            ("shuffled (upper bound)", mae_shuffled, edm.get("shuffled")),
            ("real test molecules (lower bound)", mae_real, edm.get("real")),
            ("unconditional samples, same N", mae_uncond, None)]
    print(f"\nEDM protocol, property {prop} ({unit}), MAE of the predictor (trained on A, {len(a_idx)} molecules)")
    print(f"generator: {args.recipe or args.preset + ' EGNN'}, {args.steps} steps x {args.batch_size} on B ({len(b_idx)} molecules), "
          f"{t_train:.0f} s on {args.device}; {args.sampler or 'default sampler'} {args.sample_steps} steps, guidance {args.guidance}")
    print(f"{'row':38s} {'ours':>10s} {'EDM (QM9)':>10s}")
    for name, ours, theirs in rows:
        print(f"{name:38s} {ours:10.3f} {'' if theirs is None else theirs:>10}")
    print(f"corr(predicted on conditioned samples, target) = {corr:.3f}; mol stability conditioned "
          f"{stab_cond['mol_stability']:.3f}, unconditional {stab_uncond['mol_stability']:.3f}"
          + (f" (bonds generated; EDM's rule {stab_cond['edm/mol_stability']:.3f} / "
             f"{stab_uncond['edm/mol_stability']:.3f})" if "edm/mol_stability" in stab_cond else " (EDM's rule)"))
    result = {"property": prop, "unit": unit, "molecules": {"A": len(a_idx), "B": len(b_idx), "test": len(test_idx)},
              "budget": {"steps": args.steps, "batch_size": args.batch_size, "preset": args.preset, "recipe": args.recipe,
                         "train_seconds": round(t_train), "predictor_steps": args.predictor_steps,
                         "predictor_seconds": round(t_pred), "sample_seconds": round(t_sample),
                         "sampler": args.sampler, "sample_steps": args.sample_steps, "guidance": args.guidance,
                         "device": args.device, "total_seconds": round(time.time() - t0)},
              "mae": {"conditioned": mae_cond, "atoms_only": mae_atoms, "shuffled": mae_shuffled, "real": mae_real,
                      "unconditional_same_n": mae_uncond},
              "corr_conditioned": corr, "stability": {"conditioned": stab_cond, "unconditional": stab_uncond},
              "edm": edm}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"molecule_property_{prop}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
