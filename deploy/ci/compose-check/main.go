// Command nectar-compose-check loads docker-compose.yml with compose-go, the library
// `docker compose` itself loads projects with, the way `docker compose config` does:
// interpolation, the Compose Specification schema, merge keys, path resolution, profiles,
// and the consistency checks (depends_on targets, named volumes, networks, configs, secrets).
// It then checks what the loader leaves to run time: env files exist, bind-mount sources
// exist, a service_healthy dependency has a healthcheck, a service_completed_successfully one
// does not restart, every image is pinned. It writes the resolved project of each profile set
// as JSON for deploy/ci/validate-compose's repository checks.
//
// Env files that are gitignored secrets (deploy/compose/secrets/<name>.env) do not exist in
// CI: their committed <name>.env.example is read in their place, so the keys it sets are
// checked too. A missing env file without an example is an error when it is required.
//
// Usage: nectar-compose-check -dir REPO -file docker-compose.yml -out DIR [PROFILES...]
// where each PROFILES argument is a comma-separated profile set ("" for the default). With
// none, it loads the default set, each profile of the file on its own, and all of them
// ("*"), written as default.json, <profile>.json and all.json. Exit status 1 with one line
// per problem.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/errdefs"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	dir := flag.String("dir", ".", "project directory")
	file := flag.String("file", "docker-compose.yml", "compose file, relative to -dir")
	out := flag.String("out", "", "directory for <profile set>.json resolved projects")
	flag.Parse()
	profileSets := flag.Args()
	if len(profileSets) == 0 {
		all, _, errs := load(*dir, *file, []string{"*"})
		if all == nil {
			for _, e := range errs {
				fmt.Fprintln(os.Stderr, "compose-go: "+e)
			}
			os.Exit(1)
		}
		profileSets = append([]string{""}, allProfiles(all)...)
		profileSets = append(profileSets, "*")
	}
	// Problems and notes in the order found, each once, with the profile sets it concerns.
	var problems, notes []string
	where := map[string][]string{}
	for _, set := range profileSets {
		var profiles []string
		if set != "" {
			profiles = strings.Split(set, ",")
		}
		label := set
		switch label {
		case "":
			label = "default"
		case "*":
			label = "all"
		}
		project, setNotes, errs := load(*dir, *file, profiles)
		sort.Strings(setNotes)
		for _, n := range setNotes {
			if where[n] == nil {
				notes = append(notes, n)
			}
			where[n] = append(where[n], label)
		}
		for _, e := range errs {
			if where[e] == nil {
				problems = append(problems, e)
			}
			where[e] = append(where[e], label)
		}
		if project == nil {
			continue
		}
		fmt.Printf("compose-go: profiles %s: project %q loads: %d services (%s)\n", label, project.Name,
			len(project.Services), strings.Join(sorted(project.ServiceNames()), ", "))
		if *out != "" {
			data, err := project.MarshalJSON()
			if err == nil {
				err = os.WriteFile(filepath.Join(*out, label+".json"), data, 0o644)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "compose-go: writing the resolved project: %v\n", err)
				os.Exit(1)
			}
		}
	}
	for _, n := range notes {
		fmt.Printf("compose-go: %s [profiles: %s]\n", n, strings.Join(where[n], ", "))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "compose-go: %s [profiles: %s]\n", p, strings.Join(where[p], ", "))
		}
		os.Exit(1)
	}
}

// load returns the project, informational notes and every problem found.
func load(dir, file string, profiles []string) (*types.Project, []string, []string) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, []string{err.Error()}
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(absDir, file)},
		cli.WithWorkingDirectory(absDir),
		// No OS environment: the file must load with its own defaults, as on a fresh machine.
		cli.WithEnv(nil),
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithResolvedPaths(true),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		// Env files are resolved below, where a secret file's .example stands in for it.
		cli.WithoutEnvironmentResolution,
	)
	if err != nil {
		return nil, nil, []string{err.Error()}
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return nil, nil, []string{err.Error()}
	}
	var notes, problems []string
	if err := project.CheckContainerNameUnicity(); err != nil {
		problems = append(problems, err.Error())
	}

	// Env files: the file itself, else its committed example.
	project, err = project.WithServicesTransform(func(name string, s types.ServiceConfig) (types.ServiceConfig, error) {
		var files []types.EnvFile
		for _, f := range s.EnvFiles {
			switch {
			case exists(f.Path):
				files = append(files, f)
			case exists(f.Path + ".example"):
				notes = append(notes, fmt.Sprintf("service %s: %s does not exist (a secret), reading %s.example in its place",
					name, rel(absDir, f.Path), filepath.Base(f.Path)))
				f.Path += ".example"
				files = append(files, f)
			case bool(f.Required):
				problems = append(problems, fmt.Sprintf("service %s: env file %s does not exist and has no .example beside it",
					name, rel(absDir, f.Path)))
			default:
				notes = append(notes, fmt.Sprintf("service %s: optional env file %s does not exist", name, rel(absDir, f.Path)))
			}
		}
		s.EnvFiles = files
		return s, nil
	})
	if err != nil {
		return nil, notes, append(problems, err.Error())
	}
	project, err = project.WithServicesEnvironmentResolved(false)
	if err != nil {
		return nil, notes, append(problems, err.Error())
	}

	for _, name := range sorted(project.ServiceNames()) {
		s := project.Services[name]
		problems = append(problems, checkService(project, absDir, s)...)
	}
	return project, notes, problems
}

func checkService(project *types.Project, absDir string, s types.ServiceConfig) []string {
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("service "+s.Name+": "+format, args...))
	}
	if s.Build == nil {
		if err := pinned(s.Image); err != nil {
			add("image %q: %v", s.Image, err)
		}
	}
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if !exists(v.Source) {
			// Docker would create a missing source as an empty root-owned directory.
			add("bind mount source %s does not exist", rel(absDir, v.Source))
		}
		if !strings.HasPrefix(v.Source, absDir+string(os.PathSeparator)) {
			add("bind mount source %s is outside the repository", v.Source)
		}
	}
	for depName, dep := range s.DependsOn {
		target, err := project.GetService(depName)
		if err != nil {
			if errors.Is(err, errdefs.ErrDisabled) || !dep.Required {
				continue
			}
			add("depends on %s: %v", depName, err)
			continue
		}
		switch dep.Condition {
		case types.ServiceConditionHealthy:
			hc := target.HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
				add("waits for %s to be healthy, but %s has no healthcheck", depName, depName)
			}
		case types.ServiceConditionCompletedSuccessfully:
			if r := target.Restart; r != "" && r != types.RestartPolicyNo && !strings.HasPrefix(r, types.RestartPolicyOnFailure) {
				add("waits for %s to complete, but its restart policy %q restarts it", depName, r)
			}
		}
	}
	return problems
}

// pinned refuses an image without a tag, with `latest`, or with a tag that names no version.
func pinned(image string) error {
	if image == "" {
		return errors.New("no image and no build")
	}
	if strings.Contains(image, "@sha256:") {
		return nil
	}
	slash := strings.LastIndex(image, "/")
	colon := strings.LastIndex(image, ":")
	if colon <= slash {
		return errors.New("no tag: pin a version")
	}
	tag := image[colon+1:]
	if tag == "latest" || !strings.ContainsAny(tag, "0123456789") {
		return fmt.Errorf("tag %q is not a version: pin one", tag)
	}
	return nil
}

func allProfiles(p *types.Project) []string {
	seen := map[string]bool{}
	for _, s := range p.Services {
		for _, profile := range s.Profiles {
			seen[profile] = true
		}
	}
	var out []string
	for profile := range seen {
		out = append(out, profile)
	}
	sort.Strings(out)
	return out
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func rel(base, path string) string {
	if r, err := filepath.Rel(base, path); err == nil {
		return r
	}
	return path
}

func sorted(names []string) []string {
	out := append([]string(nil), names...)
	sort.Strings(out)
	return out
}
