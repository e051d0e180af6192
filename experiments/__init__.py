"""The benchmark harness.

Layering (an arrow means "imports"; nothing imports upwards):

    stages/<name>.py   thin entry points, one per DVC stage or user command
        -> data/, training/, evaluation/, complexity/, benchmark/, reporting/   the library
            -> registry.py (models), published.py (published figures), config.py (params.yaml),
               env.py (environment block), atomic.py (atomic writes)
                -> s4m/, baselines/   the model libraries
"""
