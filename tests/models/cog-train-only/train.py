from cog import Input


def train(text: str = Input(description="What the weights say")) -> str:
    print("training on", text)
    return f"trained: {text}"
