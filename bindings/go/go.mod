module github.com/libcmdop/cmdop-go

go 1.24
