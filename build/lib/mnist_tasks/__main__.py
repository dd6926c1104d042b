from mnist_tasks.cli import main

main()
