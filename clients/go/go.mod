module example.invalid/gpushare/clients/go

go 1.19

// Built with -mod=vendor from Debian 12's packaged sources (build.sh makes vendor/): these are
// the versions of those packages, not versions to download.
require (
	github.com/golang/protobuf v1.5.2
	golang.org/x/net v0.7.0
	golang.org/x/sys v0.3.0
	golang.org/x/text v0.7.0
	google.golang.org/genproto v0.0.0-20200413115906-b5235f65be36
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
