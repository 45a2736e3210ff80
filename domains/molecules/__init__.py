"""Molecules: E(3)-equivariant diffusion over 3-D molecules (EDM), QM9 / SDF / XYZ / SMILES data,
stability and validity metrics, SDF + XYZ output."""

from .chem import BondTables, analyze_molecule, validity_table
from .dataset import FeatureCodec, MoleculeDataset
from .domain import MoleculeDomain, analyze_samples
from .egnn import EGNN, PRESETS

__all__ = ["MoleculeDomain", "MoleculeDataset", "FeatureCodec", "EGNN", "PRESETS", "BondTables",
           "analyze_molecule", "analyze_samples", "validity_table"]
