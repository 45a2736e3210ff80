"""The molecule domain: E(3)-equivariant diffusion over 3-D molecules (EDM, Hoogeboom et al. 2022).

* data: the bundled QM9 subset (default), ``qm9`` (all of QM9 from qm9pack, EDM's split), a
  torch-geometric QM9 folder, SDF / XYZ / SMILES files or folders of them;
* model space: ``x = [positions, one-hot / 4 (, charge / 10)]`` on a
  :class:`~diffuse.core.data.graph.GraphSpace` (zero centre of mass for positions);
* backbone: :class:`~diffuse.domains.molecules.egnn.EGNN` (presets ``small``, ``edm``);
* diffusion: the polynomial schedule, eps prediction, 1000 steps;
* metrics: valid & connected, EDM's molecule / atom stability, RDKit validity (largest fragment,
  EDM's), uniqueness, novelty against the training molecules (``chem.validity_table``), under
  EDM's QM9 or GEOM-Drugs bond rule (``bond_rule`` option; by default chosen by the elements);
* writer: one SDF with all samples plus one XYZ per molecule;
* conditions: ``property`` (``--condition property:alpha[,gap...]``; QM9's mu, alpha, homo,
  lumo, gap, Cv, normalised by the training data, given to the EGNN as invariant node context);
  atom counts stay sampling structure, drawn given the property (``property.py``) or given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...core.memory import available_bytes
from ...core.data.condition import Condition
from ...core.data.domain import Batch, Domain, DomainDataset
from ...core.errors import DataError, UserInputError
from ...core.data.graph import GraphSpace
from ...core.data.space import GeneratorLike

from .chem import BOND_RULES, BondTables, MoleculeReport, analyze_molecule, bond_rule, validity_table
from .dataset import QM9_ELEMENTS, FeatureCodec, MoleculeDataset, load_bundled, split_batch, cached_dataset
from .backbones import BACKBONES
from .property import CONDITION_NAME, PROPERTY_NAMES, draw_atom_counts, parse_property_names
from .readers import read_path
from .writer import write_sdf, write_xyz
from .atom_counts import draw_num_atoms as _num_atoms
from .bonded_data import load_bonded
from .bonded_domain import BondedMethods

__all__ = ["MoleculeDomain", "BondedMoleculeDomain", "analyze_samples", "training_smiles"]

log = logging.getLogger(__name__)

_DATA_DEFAULTS: dict[str, Any] = {
    "elements": None,          # vocabulary; None: QM9's H C N O F for QM9 data, else the data's own
    "include_charges": False,  # add the formal charge as a feature
    "onehot_scale": 0.25,      # EDM's feature scaling (positions x1, one-hot /4, charges /10)
    "charge_scale": 0.1,
    "add_hydrogens": True,     # make implicit hydrogens of SDF records explicit
    "split": "train",          # QM9 sources: train | valid | test | all (EDM's seeded split)
    "split_seed": 0,
    "seed": 0,                 # ETKDG seed for SMILES input
    "max_atoms": None,
    "properties": None,        # property names batches carry as the ``property`` condition (--condition property:NAME)
    "bond_rule": "auto",       # EDM's evaluation rule: qm9 | geom (single bonds into RDKit) | auto (by the elements)
    "bonds": False,            # molecules with bonds and charges, a mixed state (bonded_data.py): bond-generating models
}


def analyze_samples(samples: Batch, data_info: dict[str, Any]) -> tuple[list, list[MoleculeReport]]:
    """Decode a batch of samples into molecules and analyze each (EDM's rules)."""
    molecules = split_batch(samples, data_info)
    tables = BondTables(data_info["elements"], rule=data_info.get("bond_rule", "auto"))
    with_charges = bool(data_info.get("include_charges", False))
    reports = [analyze_molecule(p, t, tables, c if with_charges else None) for p, t, c in molecules]
    return molecules, reports


def training_smiles(reference: DomainDataset) -> set[str] | None:
    """The SMILES novelty is measured against: for a held-out part of a data set (the default
    evaluation reference, ``DomainDataset.split``) those of the rest of it, the molecules the
    model was trained on; for data given whole as the reference, its own."""
    complement = getattr(reference, "complement", None)
    source = complement() if callable(complement) else reference
    ref = getattr(source, "reference_smiles", None)
    return set(ref) if ref is not None else None


#: a lower bound of the memory one ordered atom pair costs while sampling: the int64 index tensors
#: of ``full_edges`` (~6 x 8 bytes) and three float32 ``[pairs, hidden]`` activations of the
#: smallest preset (hidden 32); real models use more, so a refusal on this bound is certain
BYTES_PER_PAIR = 6 * 8 + 3 * 4 * 32


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on the CPU, or None if unknown (``core.memory``)."""
    return available_bytes("cpu")


def _atom_counts(value: Any) -> list[int]:
    """Requested atom counts as Python ints; a ValueError for bools, non-integers, or nesting."""
    if isinstance(value, dict):
        value = value.get("num_atoms")
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise UserInputError(f"atom counts must be integers, got a {value.dtype} tensor")
        flat = value.reshape(-1)
        if flat.is_floating_point():
            if not bool(torch.isfinite(flat).all()) or bool((flat != flat.round()).any()):
                bad = flat[~torch.isfinite(flat) | (flat != flat.round())][0].item()
                raise UserInputError(f"atom counts must be whole numbers, got {bad}")
        return [int(v) for v in flat.tolist()]
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise UserInputError(f"atom counts must be whole numbers, got {v!r}")
        out.append(int(v))
    return out


def _qm9pack_properties(raw) -> tuple[Any, list[str]]:
    """QM9's properties for molecules read from qm9pack (names ``QM9 <index> <smiles>``), in the
    bundled data's columns and units (:data:`~.build_bundled_data.PROPERTIES`)."""
    import numpy as np

    from .build_bundled_data import PROPERTIES, read_properties

    index = np.array([int(n.split()[1]) for n in raw.names], np.int64)
    return read_properties(index), list(PROPERTIES)


class MoleculeDomain(Domain):
    """3-D molecules with hydrogens; EDM's E(3)-equivariant diffusion."""

    name = "molecules"
    description = "3-D molecules (QM9, SDF/XYZ/SMILES): EGNN, stability / validity metrics, SDF + XYZ output"
    meaning_keys = ("elements", "charge_values")
    backbones = BACKBONES
    default_backbone = "egnn"
    likelihood_unit = "nats"
    named_datasets = ("qm9", "qm9pack", "QM9")

    # ---------------------------------------------------------------- binding
    def bind(self, info: dict[str, Any]) -> "MoleculeDomain":
        """The domain bound to ``info``; data with bonds (``info["bonds"]``) gives a
        :class:`BondedMoleculeDomain` (``bonded_domain``: mixed states of atoms, charges and bonds)."""
        bound = super().bind(info)
        if info.get("bonds") and not isinstance(bound, BondedMoleculeDomain):
            bonded = BondedMoleculeDomain.__new__(BondedMoleculeDomain)
            bonded.__dict__.update(bound.__dict__)
            return bonded
        return bound

    # ---------------------------------------------------------------- configuration
    def default_diffusion(self) -> dict[str, Any]:
        # the EGNN takes the diffusion time t in [0, 1] itself as a node feature (EDM's convention):
        # c_noise = t * time_scale with time_scale 1
        return {"schedule": {"kind": "polynomial", "power": 2.0, "precision": 1e-5, "num_steps": 1000},
                "parameterization": "eps", "weighting": "uniform", "time_scale": 1.0}

    @classmethod
    def upgrade_config(cls, config: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 -> 2: the EGNN divided its noise input by its own ``time_scale`` (default 1000,
        equal to the diffusion's); backbones now get it already scaled, so the EGNN's scaling moves
        into ``diffusion.time_scale`` (``1000 / 1000 = 1`` for every shipped model)."""
        if version >= 2:
            return config
        model = dict(config.get("model") or {})
        scale = float(model.pop("time_scale", 1000.0))
        diffusion = dict(config.get("diffusion") or {})
        diffusion["time_scale"] = float(diffusion.get("time_scale", 1000.0)) / scale
        return {**config, "model": model, "diffusion": diffusion}

    def default_train(self) -> dict[str, Any]:
        # the small preset trains at about 200 molecules/s on one CPU core: ~10 minutes. lr 2e-3 was
        # chosen on a full-QM9 screen (5e-4 / 1e-3 / 2e-3 / 4e-3; 4e-3 diverges), see the README
        return {"steps": 2000, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "grad_clip": 1.0,
                "ema_decay": 0.999, "eval_samples": 64, "eval_sampler": "ddpm", "eval_steps": 500}

    def default_data(self) -> dict[str, Any]:
        return dict(_DATA_DEFAULTS)

    def default_sampling(self) -> tuple[str, int | None]:
        # deterministic few-step samplers make poor molecules (the 10,000-step shipped model: valid &
        # connected 0.14 with DDIM-50 on 128 molecules against 0.43 with DDPM-500 on 256, atom
        # stability 0.76 against 0.87); EDM samples with the ancestral chain too
        return "ddpm", 500

    def check_structure(self, value: Any, batch_size: int | None = None) -> None:
        """Atom counts (``--condition``): whole numbers >= 1, at most twice the largest molecule
        of the training data, and an all-pairs edge set per batch that fits in memory."""
        if value is None:
            return
        counts = _atom_counts(value)
        if not counts:
            raise UserInputError("no atom counts given")
        if min(counts) < 1:
            raise UserInputError(f"atom counts must be at least 1, got {min(counts)}")
        hist = self.info.get("num_atoms_hist") or []
        largest = max([int(self.info.get("max_atoms") or 0)] + [int(h[0]) for h in hist])
        if largest and max(counts) > 2 * largest:
            raise UserInputError(f"atom counts must be at most {2 * largest} (twice the largest molecule in the "
                             f"training data, {largest} atoms), got {max(counts)}")
        per = batch_size or len(counts)
        if len(counts) == 1:
            pairs = per * counts[0] ** 2
        else:
            pairs = max(sum(n * n for n in counts[i:i + per]) for i in range(0, len(counts), per))
        need, avail = pairs * BYTES_PER_PAIR, available_memory()
        if avail is not None and need > avail:
            raise UserInputError(f"sampling {max(counts)}-atom molecules {per} at a time needs at least "
                             f"{need / 2 ** 30:.1f} GiB for the all-pairs edges but {avail / 2 ** 30:.1f} GiB is "
                             "available; use a smaller --batch-size or fewer atoms")

    def activation_bytes(self, batch_size: int, model: dict[str, Any]) -> int | None:
        """A lower bound for the EGNN (``core.memory``): the all-pairs edges of the largest training
        molecule (some batch of every epoch holds it) times ``hidden x layers x (16 inv_sublayers + 8)``
        bytes per pair kept for the backward pass (measured: about 28 per pair, hidden unit and layer)."""
        if model.get("backbone", "egnn") != "egnn":
            return None
        from .egnn import model_kwargs
        hist = self.info.get("num_atoms_hist") or []
        n = max([int(self.info.get("max_atoms") or 0)] + [int(h[0]) for h in hist])
        kw = model_kwargs(model)
        return n * (n - 1) * int(kw["hidden"]) * int(kw["layers"]) * (16 * int(kw["inv_sublayers"]) + 8)

    # ---------------------------------------------------------------- data and model
    def load_data(self, path: str | Path | None, options: dict[str, Any]) -> DomainDataset:
        unknown = sorted(set(options) - set(_DATA_DEFAULTS))
        if unknown:
            raise DataError(f"unknown molecule data option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(_DATA_DEFAULTS))}")
        opts = {**_DATA_DEFAULTS, **options}
        if opts["properties"] is not None:
            opts["properties"] = parse_property_names(opts["properties"])
        if opts["bond_rule"] not in ("auto", *BOND_RULES):
            raise DataError(f"unknown bond_rule {opts['bond_rule']!r}; expected auto, {' or '.join(BOND_RULES)}")
        if opts["bonds"]:
            ds = load_bonded(path, opts)   # a mixed state: coordinates, atoms, charges, bonds
        elif path is None:
            ds = load_bundled(opts)
        else:
            if str(path).lower() in ("qm9", "qm9pack") and opts["elements"] is None:
                opts["elements"] = QM9_ELEMENTS

            def build() -> MoleculeDataset:
                raw = read_path(path, opts)
                props = None
                if str(path).lower() in ("qm9", "qm9pack") and opts["properties"]:
                    props = _qm9pack_properties(raw)
                return MoleculeDataset.from_raw(raw, str(path), opts, props)
            ds = cached_dataset(path, opts, build)   # user files: converted once, then memory-mapped
        ds.bond_rule = bond_rule(ds.codec.elements, opts["bond_rule"])
        return ds

    # --- latent diffusion (latentmol helper) ---
    def build_autoencoder(self, config: dict[str, Any]) -> nn.Module:
        """The GeoLDM-style equivariant autoencoder (``autoencoder.py``): per atom an equivariant
        latent position and ``latent_features`` invariant latent features."""
        from .autoencoder import MoleculeAutoencoder
        return MoleculeAutoencoder(config, self.info)

    def default_autoencoder(self) -> dict[str, Any]:
        # 300 steps recover 99.8 % of held-out elements (README); twice that as the default
        return {"model": {}, "train": {"steps": 600, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50,
                                       "grad_clip": 1.0, "ema_decay": 0.99, "checkpoint_every": 0}}

    # --- noise-aware classifier (clf helper) ---
    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """An E(3)-invariant EGNN classifier / property regressor, mean-pooled (``classifier.py``)."""
        from .classifier import DEFAULT_CLASSIFIER, MoleculeClassifier

        unknown = sorted(set(model) - set(DEFAULT_CLASSIFIER))
        if unknown:
            raise UserInputError(f"unknown {self.name} classifier option(s): {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(DEFAULT_CLASSIFIER))}")
        return MoleculeClassifier(FeatureCodec.from_info(self.info).num_features, target.out_dim,
                                  **{**DEFAULT_CLASSIFIER, **model})

    def classifier_property(self, name: str, batch: Batch) -> torch.Tensor:
        """Properties computed from the positions (``gyration``: radius of gyration, Angstrom)."""
        from .classifier import molecule_property

        return molecule_property(name, batch.x, batch.space)

    def template(self, num: int, generator: GeneratorLike = None, structure: Any = None) -> Batch:
        """``num`` zero molecules; atom counts from ``structure`` (an int, a list, or
        ``{"num_atoms": ...}``) or drawn from the training histogram with ``generator`` (one
        generator, or one per molecule)."""
        data_info = self.info
        counts = _num_atoms(num, data_info, generator, structure)
        batch = torch.repeat_interleave(torch.arange(num), counts)
        dim = int(data_info.get("feature_dim", 3 + FeatureCodec.from_info(data_info).num_features))
        x = torch.zeros(int(counts.sum()), dim)
        return Batch(x, GraphSpace(batch, num, centred=3), None, {"elements": list(data_info["elements"])})

    # --- property conditions (props helper) ---
    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        """``property:alpha`` or ``property:alpha,gap`` (repeatable) -> ``{"properties": [...]}``."""
        props: list[str] = []
        for name in names:
            head, _, rest = str(name).partition(":")
            if head.strip() != CONDITION_NAME:
                raise UserInputError(f"the molecules domain cannot condition on {name!r}; it supports "
                                 f"property:NAME[,NAME...] with NAME in {', '.join(PROPERTY_NAMES)}")
            props += [p for p in parse_property_names(rest) if p not in props]
        return {"properties": props} if props else {}

    def conditional_structure(self, num: int, cond: Condition, generator: GeneratorLike = None) -> Any:
        """Atom counts drawn jointly with the target property: ``N ~ p(N | property)``, the count
        of one of the 50 training molecules nearest the target (see ``property.py``); molecules
        without a given property draw from the plain count histogram."""
        data_info = self.info
        table = data_info.get("property_atoms")
        if CONDITION_NAME not in cond or not table or not data_info.get("num_atoms_hist"):
            return None
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * num
        if len(gens) != num:
            raise UserInputError(f"got {len(gens)} generators for {num} molecules")
        return draw_atom_counts(table, data_info["num_atoms_hist"], cond, gens)

    # ---------------------------------------------------------------- results
    def describe_samples(self, samples: Batch) -> dict[str, float]:
        _, reports = analyze_samples(samples, self.info)
        return validity_table(reports)

    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        _, reports = analyze_samples(samples, self.info)
        return validity_table(reports, training_smiles(reference))

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        data_info = self.info
        out_dir = Path(out_dir)
        xyz_dir = out_dir / "xyz"
        xyz_dir.mkdir(parents=True, exist_ok=True)
        molecules, reports = analyze_samples(samples, data_info)
        elements: Sequence[str] = data_info["elements"]
        paths = [write_sdf(out_dir / "molecules.sdf", molecules, reports, elements,
                           bool(data_info.get("include_charges", False)))]
        for k, ((pos, types, _), rep) in enumerate(zip(molecules, reports)):
            comment = (f"sample_{k:05d} stable={int(rep.stable)} valid={int(rep.valid)} "
                       f"smiles={rep.smiles or '-'}")
            paths.append(write_xyz(xyz_dir / f"sample_{k:05d}.xyz", pos, [elements[t] for t in types.tolist()],
                                   comment))
        return paths

    # --- completion (inpaint helper) ---
    def completion_input(self, path, options):
        """A fixed fragment (SDF / XYZ) plus ``num_atoms`` minus its size free atoms; see ``inpaint``."""
        from .inpaint import molecule_completion_input
        return molecule_completion_input(path, options, self.info, self.check_structure)


class BondedMoleculeDomain(BondedMethods, MoleculeDomain):
    """The ``molecules`` domain bound to data with bonds (``bonded_domain``): the same domain (name,
    data reading, conditions), whose samples are mixed states generated with their bonds."""
