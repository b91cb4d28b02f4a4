pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.service",
    "tests.fixtures.fake_lambda",
    "tests.fixtures.fake_personalize",
    "tests.fixtures.fake_recommender",
    "tests.fixtures.fake_sagemaker",
]
