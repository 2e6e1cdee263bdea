"""Architectures that produce factor energies: chains fed by any module
(:mod:`factorebm.energies.chain`) and parametric factor graphs
(:mod:`factorebm.energies.graph`), each with its batch objective."""
