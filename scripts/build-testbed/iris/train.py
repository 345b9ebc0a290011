import bentoml
from sklearn import datasets, svm

iris = datasets.load_iris()
clf = svm.SVC(gamma="scale")
clf.fit(iris.data, iris.target)
print(bentoml.sklearn.save_model("iris_clf", clf))
