"""Evaluation: task formats (`tasks`), metrics (`metrics`), sandboxed code execution (`sandbox`),
one-call scoring (`scoring`) and the paper-vs-project tables (`tables`)."""
