import bentoml
import numpy as np

GREETING = "iris v1"


@bentoml.service(resources={"cpu": "1"})
class IrisClassifier:
    model_ref = bentoml.models.BentoModel("iris_clf:latest")

    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(self.model_ref)

    @bentoml.api
    def classify(self, input_series: np.ndarray) -> np.ndarray:
        return self.model.predict(input_series)

    @bentoml.api
    def greeting(self) -> str:
        return GREETING
