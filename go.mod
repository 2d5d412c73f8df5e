module github.com/usnetd/usnetd

go 1.26
