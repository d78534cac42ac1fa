"""Developer tools, outside the installed package: run from the repository root.

    python -m tools.ab --rev main --model cart dense_effective          # before/after a change, same process
    python -m tools.micro --threads 1 --clock cpu                        # fused-op micro-benchmarks
    python -m tools.step_profile --shape main --model cart --threads 1   # where a training step's time goes

`cart bench` (cart/bench/) is the user-facing benchmark; these are the instruments used to optimise it.
"""
