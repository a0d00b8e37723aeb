from util import greet

print(greet("lab"))
