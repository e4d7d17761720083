"""`python -m spacy_giellm ...`"""
from .cli import main

if __name__ == "__main__":
    main()
