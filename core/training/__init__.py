"""Training: the trainer and its objective protocol (``trainer``), optimisation pieces (``optim``),
signal handling (``signals``), checkpoints (``checkpoint``), several processes (``distributed``),
evaluation budgets (``evalbudget``) and reflow pairs (``reflow``). Import from the modules; this
package imports nothing."""
