"""The EBM's math (pure torch): the backbone Psi, sparse coding, the energy, Langevin sampling, inpainting."""
