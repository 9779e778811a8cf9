"""One answer about a picture, with the logits behind it, printed as JSON: the GPU tests run this in a process of its
own for each device (a driver that crashes ends this process, not the test run) and compare the two.

    python -m tests.gpu.probe MODEL_FOLDER IMAGE --device cpu|gpu
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from glimpse.engine.runtime.model import load_model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--device", choices=("cpu", "gpu"), required=True)
    args = parser.parse_args(argv)
    with load_model(args.model, n_ctx=1024, tune=False, device=args.device) as model:
        chat = model.conversation(args.image, size=256)  # 16 image rows, fed to llama.cpp as embeddings
        answer = chat.ask("What is in this picture?", max_tokens=6)
        after_answer = model.llm.logits()  # one position: the matrix-vector path
        ids = model.llm.tokenize("Tell me more about the colours, please.", special=False)
        batch = model.llm.eval_tokens_with_logits(ids)  # several positions at once: the matrix-matrix path
        print(json.dumps({"devices": model.devices, "gpu_layers": model.llm.gpu_layers,
                          "image_tokens": answer.timings.image_tokens, "token_ids": list(answer.token_ids),
                          "logits": np.concatenate([after_answer[None, :], batch]).astype(float).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
