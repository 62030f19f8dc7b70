"""Attribution: which blocks' weight changes move an outcome, by swapping tensors and re-evaluating."""
