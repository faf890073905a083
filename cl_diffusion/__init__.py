"""cl_diffusion: a continual-learning benchmark suite for diffusion models.

Reference method: generative distillation (Masip, Rodriguez, Tuytelaars, van de Ven,
"Continual Learning of Diffusion Models with Generative Distillation", CoLLAs 2024).
"""
__version__ = "0.1.0"
