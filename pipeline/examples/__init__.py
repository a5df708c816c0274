"""Worked examples for three user questions: custom Keras models, their data files, and how to run them.

- `seed_models.mnist_mlp`: an unnamed Sequential 784 -> 64 relu -> 64 relu -> 10 softmax on MNIST digits, trained
  with Adam and cross-entropy; validation error = MSE of the softmax output against one-hot labels.

      python -m pipeline data=mnist optimizer=adam influence.objective=mse \\
          model=custom model.builder=pipeline.examples.seed_models:mnist_mlp model.from_logits=false

- `seed_models.quadratic_mlp`: 1-D regression y = (x - 5)^2 / 25; `sensitivity` (d output / d input of the
  trained model) should approach 2 (x - 5) / 25.

      python -m pipeline.examples.make_data quadratic --out quadratic.npz
      python -m pipeline task=regression data=npz data.path=quadratic.npz optimizer=adam influence=sensitivity \\
          model=custom model.builder=pipeline.examples.seed_models:quadratic_mlp

- `seed_models.price_model`: a subclassed model wrapping a "hidden model", on the inputs [reference_prices,
  hidden_inputs]; d output / d reference_prices = hidden + 1, d output / d hidden_inputs = reference_prices * kernel.

      python -m pipeline.examples.make_data prices --out prices.npz
      python -m pipeline task=regression data=npz data.path=prices.npz optimizer=adam influence=sensitivity \\
          model=custom model.builder=pipeline.examples.seed_models:price_model

`make_data` writes float64 arrays, one `x_train.<name>` / `x_val.<name>` key per input for several inputs.
"""
