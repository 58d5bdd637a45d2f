"""Training, the batch side's model work: everything that fits weights or mines data for
it, in one place, out of the serving packages (``retrieval`` and ``rerank`` hold only what
answers a query).

- :mod:`~indexer.training.pipeline`: a towers or reranker job from files to a registered
  model (``shopsearch train towers|reranker`` without the command line): load
  (:mod:`~indexer.training.inputs`), mine, prepare, train, card
  (:mod:`~indexer.training.cards`), register.
- :mod:`~indexer.training.loop`: the training loop both trainers run (steps, progress,
  per-epoch dev measurement), under :mod:`~indexer.training.budget` (deadline, planned
  steps, the "partial epoch" report); :mod:`~indexer.training.dev_metrics`: what they
  measure on dev.
- :mod:`~indexer.training.towers`: the two towers (contrastive fine-tuning, distillation
  from the cross-encoder).
- :mod:`~indexer.training.reranker`: the cross-encoder; :mod:`~indexer.training.distill`
  (teacher margins) and :mod:`~indexer.training.compress` (layer pruning, distilled labels).
- :mod:`~indexer.training.mined_data`: judged queries mined into training pairs and
  triplets (BM25 and dense hard negatives, mined by
  :mod:`~indexer.training.candidate_mining`).
- :mod:`~indexer.training.sequence` (examples and batches in
  :mod:`~indexer.training.sequence_data`), :mod:`~indexer.training.personal`,
  :mod:`~indexer.training.recommender` (with its `_tuning` and `_ranker`): the
  shopper models (sequence model, shopper-aware re-scorer, recommender bundle).

Imports: this package uses ``retrieval`` and ``rerank`` (the models it trains);
neither of them imports it.
"""
