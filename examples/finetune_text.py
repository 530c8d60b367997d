"""Fine-tune all-MiniLM-L6-v2 on BBC News (5 topics), offline, with one optimizer.

    python examples/finetune_text.py --method slsam:0.2 --seed 0 --out run.json
    python examples/finetune_text.py --method sam --quick

Methods: adamw, sam, slsam:S, uniform:S, slsam1p:S, rst:P, looksam:K (examples/finetune/methods.py).
Prints and writes (--out) test accuracy against training wall-clock time.
"""

from finetune.cli import TEXT, main

if __name__ == "__main__":
    main("text", TEXT, __doc__)
